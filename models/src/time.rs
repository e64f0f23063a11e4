//! Wall-clock instants as the trust set and bundle manifests write them: TOML datetimes
//! (`2027-06-30` or `2027-06-30T12:00:00Z`), compared in Unix seconds.
//!
//! A date alone means midnight UTC at its start; a datetime without an offset is read as UTC
//! (a vehicle's local time zone is not something a signed file should depend on).

use toml::value::Datetime;

/// Seconds since 1970-01-01T00:00:00Z, or `None` for a datetime without a date.
pub fn unix_seconds(dt: &Datetime) -> Option<i64> {
    let d = dt.date?;
    let days = days_from_civil(i64::from(d.year), i64::from(d.month), i64::from(d.day));
    let (mut secs, offset_min) = match (dt.time, dt.offset) {
        (Some(t), off) => (
            i64::from(t.hour) * 3600 + i64::from(t.minute) * 60 + i64::from(t.second),
            match off {
                Some(toml::value::Offset::Custom { minutes }) => i64::from(minutes),
                _ => 0,
            },
        ),
        (None, _) => (0, 0),
    };
    secs -= offset_min * 60;
    Some(days * 86_400 + secs)
}

/// Days from 1970-01-01 to the proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Now, in Unix seconds (`BEVRT_NOW_UNIX` overrides it, so tests can move the clock).
pub fn now_unix() -> i64 {
    if let Some(t) = std::env::var("BEVRT_NOW_UNIX")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return t;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        unix_seconds(&s.parse().unwrap()).unwrap()
    }

    #[test]
    fn dates_and_offsets_land_on_the_right_second() {
        assert_eq!(at("1970-01-01"), 0);
        assert_eq!(at("2000-03-01T00:00:00Z"), 951_868_800);
        assert_eq!(at("2026-12-07T01:00:00Z"), 1_796_605_200);
        assert_eq!(at("2026-12-07T02:00:00+01:00"), 1_796_605_200);
        assert_eq!(at("2026-12-07T01:00:00"), 1_796_605_200);
        assert_eq!(at("1969-12-31T23:59:59Z"), -1);
    }
}
