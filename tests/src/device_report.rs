//! The device check's report: checks run in named groups, each isolated (an error or a panic
//! in one group is recorded as that group's failure and the next group runs), and the JSON
//! rewritten after every group, so a run cut short by a time limit or a sticky device fault
//! still leaves everything gathered so far on disk.

use serde_json::{Value, json};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

pub type CheckResult = Result<(), Box<dyn std::error::Error>>;

pub struct Recorder {
    out: PathBuf,
    /// Fields besides the checks (device, versions, timings).
    pub header: serde_json::Map<String, Value>,
    checks: Vec<Value>,
    groups: Vec<Value>,
    /// `--fail-check GROUP`: that group fails on purpose (tests the isolation on a GPU).
    fail_group: Option<String>,
}

impl Recorder {
    pub fn new(out: PathBuf, fail_group: Option<String>) -> Recorder {
        let r = Recorder {
            out,
            header: Default::default(),
            checks: vec![],
            groups: vec![],
            fail_group,
        };
        r.flush();
        r
    }

    /// Run one group. `body` pushes its checks (objects with a `pass` field); `after` runs
    /// once the body is done, whatever happened (the GPU check synchronises there and
    /// surfaces recorded errors), and its error is the group's.
    pub fn group(
        &mut self,
        name: &str,
        body: impl FnOnce(&mut Vec<Value>) -> CheckResult,
        after: impl FnOnce() -> CheckResult,
    ) -> bool {
        let mut found = vec![];
        let outcome = if self.fail_group.as_deref() == Some(name) {
            Err(format!(
                "deliberate failure of group '{name}' (--fail-check)"
            ))
        } else {
            match catch_unwind(AssertUnwindSafe(|| body(&mut found))) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(p) => Err(format!(
                    "panic: {}",
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default()
                )),
            }
        };
        let outcome = outcome.and_then(|()| after().map_err(|e| format!("after the group: {e}")));
        let checks_pass = found.iter().all(|c| c["pass"].as_bool().unwrap_or(false));
        let pass = outcome.is_ok() && checks_pass;
        for mut c in found {
            c["group"] = json!(name);
            self.checks.push(c);
        }
        let mut g = json!({"group": name, "pass": pass});
        if let Err(e) = &outcome {
            g["error"] = json!(e);
            eprintln!("group {name}: {e}");
        }
        self.groups.push(g);
        self.flush();
        pass
    }

    pub fn all_passed(&self) -> bool {
        !self.groups.is_empty() && self.groups.iter().all(|g| g["pass"] == json!(true))
    }

    pub fn report(&self) -> Value {
        let mut v = Value::Object(self.header.clone());
        v["all_passed"] = json!(self.all_passed());
        v["groups"] = json!(self.groups);
        v["checks"] = json!(self.checks);
        v
    }

    /// Rewrite the JSON (through a temporary file and a rename: never half a file).
    pub fn flush(&self) {
        let tmp = self.out.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&self.report()).unwrap_or_default();
        if let Err(e) = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &self.out)) {
            eprintln!("{}: cannot write the report: {e}", self.out.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_or_panicking_group_leaves_every_other_result_in_the_json() {
        let dir = std::env::temp_dir().join(format!("bevrt-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("device_check.json");
        let mut r = Recorder::new(out.clone(), Some("deliberate".into()));
        let ok = |name: &'static str| {
            move |c: &mut Vec<Value>| -> CheckResult {
                c.push(json!({"kernel": name, "pass": true}));
                Ok(())
            }
        };
        let fine = || -> CheckResult { Ok(()) };
        assert!(r.group("first", ok("a"), fine));
        assert!(!r.group("deliberate", ok("never"), fine));
        assert!(!r.group("errors", |_| Err("launch failed".into()), fine));
        assert!(!r.group("panics", |_| panic!("boom"), fine));
        assert!(!r.group("sticky", ok("b"), || Err("illegal address".into())));
        assert!(r.group("last", ok("c"), fine));
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(v["all_passed"], json!(false));
        let groups = v["groups"].as_array().unwrap();
        assert_eq!(groups.len(), 6);
        assert!(groups[1]["error"].as_str().unwrap().contains("deliberate"));
        assert!(
            groups[2]["error"]
                .as_str()
                .unwrap()
                .contains("launch failed")
        );
        assert!(groups[3]["error"].as_str().unwrap().contains("boom"));
        assert!(
            groups[4]["error"]
                .as_str()
                .unwrap()
                .contains("illegal address")
        );
        let kernels: Vec<&str> = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["kernel"].as_str().unwrap())
            .collect();
        assert_eq!(kernels, ["a", "b", "c"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
