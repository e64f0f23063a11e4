//! Labels for the images bevrt writes for people (the demo's side-by-side): a 5x7 pixel font
//! for upper-case letters, digits and a few signs, drawn at an integer scale, and the class
//! legend (colour swatch + name per class). No font files, no dependencies.

use image::{Rgb, RgbImage};

/// 5x7 glyphs, one row per byte, bit 4 = leftmost column.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        ' ' => [0; 7],
        // anything else: a hollow box, so a missing glyph is visible rather than silent
        _ => [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F],
    }
}

/// Width in pixels of `text` at `scale` (6 columns per character, the last one blank).
pub fn text_width(text: &str, scale: u32) -> u32 {
    text.chars().count() as u32 * 6 * scale
}

/// Draws `text` with its top-left corner at (x, y); pixels outside the image are skipped.
pub fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, scale: u32, colour: [u8; 3]) {
    for (i, c) in text.chars().enumerate() {
        let g = glyph(c);
        let x0 = x + i as u32 * 6 * scale;
        for (row, bits) in g.iter().enumerate() {
            for col in 0..5u32 {
                if bits & (0x10 >> col) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (px, py) = (x0 + col * scale + dx, y + row as u32 * scale + dy);
                        if px < img.width() && py < img.height() {
                            img.put_pixel(px, py, Rgb(colour));
                        }
                    }
                }
            }
        }
    }
}

/// A class's name and display colour.
pub type ClassEntry = (String, [u8; 3]);

/// A strip `width` wide: one swatch and name per class, wrapped onto as many rows as needed.
pub fn class_legend(width: u32, classes: &[ClassEntry], scale: u32) -> RgbImage {
    let (line_h, swatch, pad) = (10 * scale, 7 * scale, 4 * scale);
    let mut rows: Vec<Vec<(u32, &ClassEntry)>> = vec![vec![]];
    let mut x = pad;
    for c in classes {
        let w = swatch + 2 * scale + text_width(&c.0, scale) + 3 * pad;
        if x + w > width && !rows.last().is_some_and(|r| r.is_empty()) {
            rows.push(vec![]);
            x = pad;
        }
        rows.last_mut().expect("one row").push((x, c));
        x += w;
    }
    let h = rows.len() as u32 * line_h + pad;
    let mut img = RgbImage::from_pixel(width, h, Rgb([255, 255, 255]));
    for (r, row) in rows.iter().enumerate() {
        let y = pad + r as u32 * line_h;
        for (x, (name, colour)) in row {
            for dy in 0..swatch {
                for dx in 0..swatch {
                    if x + dx < width {
                        img.put_pixel(x + dx, y + dy, Rgb(*colour));
                    }
                }
            }
            draw_text(&mut img, x + swatch + 2 * scale, y, name, scale, [0, 0, 0]);
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_legend_draw_where_asked() {
        let mut img = RgbImage::from_pixel(40, 10, Rgb([255, 255, 255]));
        draw_text(&mut img, 1, 1, "CAR", 1, [0, 0, 0]);
        // 'C' starts with a blank top-left pixel and an inked one beside it
        assert_eq!(img.get_pixel(1, 1).0, [255, 255, 255]);
        assert_eq!(img.get_pixel(2, 1).0, [0, 0, 0]);
        assert_eq!(text_width("CAR", 2), 36);
        let classes = vec![
            ("road".to_string(), [128, 64, 128]),
            ("car".to_string(), [0, 0, 142]),
        ];
        let l = class_legend(200, &classes, 2);
        assert_eq!(l.width(), 200);
        assert!(l.pixels().any(|p| p.0 == [0, 0, 142]));
        assert!(l.pixels().any(|p| p.0 == [0, 0, 0]));
        // narrow: wraps onto two rows
        let narrow = class_legend(60, &classes, 2);
        assert!(narrow.height() > l.height());
    }
}
