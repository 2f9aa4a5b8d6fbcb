//! Per-epoch metrics: `metrics.csv` and the learning-curve PNG.
//!
//! The PNG has two panels drawn with plain pixel loops (no plotting crate):
//! left the loss, right the accuracy (0 to 100 %), against the epoch;
//! blue = training set, orange = test set; light grid lines at quarters of
//! each axis range; labels in a 3×5 pixel font.

use crate::checkpoint::write_atomically;
use crate::error::{Error, Result};
use image::{Rgb, RgbImage};
use std::path::Path;

pub const CSV_HEADER: &str = "epoch,lr,train_loss,train_acc,test_loss,test_acc,images_per_s,elapsed_s";

/// One line of metrics.csv.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MetricsRow {
    pub epoch: usize,
    /// Learning rate of the epoch's last iteration.
    pub learning_rate: f32,
    pub train_loss: f32,
    pub train_accuracy: f32,
    /// Test-set loss and accuracy; `None` for an epoch the run did not
    /// evaluate (`--eval-every`), an empty field in the CSV.
    pub test_loss: Option<f32>,
    pub test_accuracy: Option<f32>,
    pub images_per_second: f32,
    /// Seconds since the run started (over resumed sessions too).
    pub elapsed_seconds: f64,
}

impl MetricsRow {
    fn to_csv(self) -> String {
        let optional = |value: Option<f32>| value.map_or(String::new(), |v| format!("{v:.5}"));
        format!(
            "{},{:.6},{:.5},{:.5},{},{},{:.1},{:.1}",
            self.epoch,
            self.learning_rate,
            self.train_loss,
            self.train_accuracy,
            optional(self.test_loss),
            optional(self.test_accuracy),
            self.images_per_second,
            self.elapsed_seconds
        )
    }

    fn from_csv(line: &str) -> Option<MetricsRow> {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 8 {
            return None;
        }
        // An empty field: not evaluated; anything else must be a number.
        let optional = |field: &str| -> Option<Option<f32>> {
            match field {
                "" => Some(None),
                text => text.parse().ok().map(Some),
            }
        };
        Some(MetricsRow {
            epoch: f[0].parse().ok()?,
            learning_rate: f[1].parse().ok()?,
            train_loss: f[2].parse().ok()?,
            train_accuracy: f[3].parse().ok()?,
            test_loss: optional(f[4])?,
            test_accuracy: optional(f[5])?,
            images_per_second: f[6].parse().ok()?,
            elapsed_seconds: f[7].parse().ok()?,
        })
    }
}

/// Writes every row (atomically: the old file or the new one, never half).
pub fn write_csv(path: &Path, rows: &[MetricsRow]) -> Result<()> {
    let mut text = String::from(CSV_HEADER);
    text.push('\n');
    for row in rows {
        text.push_str(&row.to_csv());
        text.push('\n');
    }
    write_atomically(path, text.as_bytes())
}

/// Reads a file written by [`write_csv`].
pub fn read_csv(path: &Path) -> Result<Vec<MetricsRow>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "cannot read metrics", e))?;
    let mut lines = text.lines();
    if lines.next() != Some(CSV_HEADER) {
        return Err(Error::file(
            path,
            format!("not an sbfnet metrics file (expected the header {CSV_HEADER})"),
        ));
    }
    lines
        .enumerate()
        .map(|(i, line)| {
            MetricsRow::from_csv(line)
                .ok_or_else(|| Error::file(path, format!("line {}: malformed metrics row \"{line}\"", i + 2)))
        })
        .collect()
}

const WIDTH: u32 = 800;
const HEIGHT: u32 = 320;
/// Space left of each panel (for the y labels) and above/below it (titles, x labels).
const MARGIN_LEFT: i64 = 48;
const MARGIN_RIGHT: i64 = 16;
const MARGIN_Y: i64 = 30;
const TRAIN_COLOUR: Rgb<u8> = Rgb([31, 119, 180]);
const TEST_COLOUR: Rgb<u8> = Rgb([255, 127, 14]);
const AXIS_COLOUR: Rgb<u8> = Rgb([0, 0, 0]);
const GRID_COLOUR: Rgb<u8> = Rgb([225, 225, 225]);

/// A rectangle of the image that maps data coordinates to pixels.
struct Panel {
    left: i64,
    top: i64,
    width: i64,
    height: i64,
    x_range: (f64, f64),
    y_range: (f64, f64),
}

impl Panel {
    /// Pixel of data point (x, y); y grows upwards.
    fn pixel(&self, x: f64, y: f64) -> (i64, i64) {
        let fx = (x - self.x_range.0) / (self.x_range.1 - self.x_range.0);
        let fy = (y - self.y_range.0) / (self.y_range.1 - self.y_range.0);
        (
            self.left + (fx * self.width as f64).round() as i64,
            self.top + self.height - (fy * self.height as f64).round() as i64,
        )
    }
}

fn put(image: &mut RgbImage, x: i64, y: i64, colour: Rgb<u8>) {
    if x >= 0 && y >= 0 && x < image.width() as i64 && y < image.height() as i64 {
        image.put_pixel(x as u32, y as u32, colour);
    }
}

/// A line `thickness` pixels wide (Bresenham, with a square brush).
fn line(image: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), colour: Rgb<u8>, thickness: i64) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut error) = (x0, y0, dx + dy);
    loop {
        for bx in 0..thickness {
            for by in 0..thickness {
                put(image, x + bx - thickness / 2, y + by - thickness / 2, colour);
            }
        }
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * error;
        if e2 >= dy {
            error += dy;
            x += sx;
        }
        if e2 <= dx {
            error += dx;
            y += sy;
        }
    }
}

/// Data points (epoch, value) drawn in one colour.
type Series = (Vec<(f64, f64)>, Rgb<u8>);

/// Axes, grid, and one polyline (with point markers) per series.
fn draw_panel(image: &mut RgbImage, panel: &Panel, series: &[Series]) {
    for quarter in 1..=4 {
        let y = panel.y_range.0 + (panel.y_range.1 - panel.y_range.0) * quarter as f64 / 4.0;
        let (a, b) = (panel.pixel(panel.x_range.0, y), panel.pixel(panel.x_range.1, y));
        line(image, a, b, GRID_COLOUR, 1);
    }
    let origin = (panel.left, panel.top + panel.height);
    line(
        image,
        origin,
        (panel.left + panel.width, origin.1),
        AXIS_COLOUR,
        2,
    );
    line(image, origin, (panel.left, panel.top), AXIS_COLOUR, 2);
    // A tick per epoch when they fit, else every tenth.
    let epochs = panel.x_range.1.round() as i64;
    let every = if epochs <= 60 { 1 } else { 10 };
    for e in (every..=epochs).step_by(every as usize) {
        let (x, y) = panel.pixel(e as f64, panel.y_range.0);
        line(image, (x, y), (x, y + 4), AXIS_COLOUR, 1);
    }
    for (points, colour) in series {
        let pixels: Vec<(i64, i64)> = points.iter().map(|&(x, y)| panel.pixel(x, y)).collect();
        for pair in pixels.windows(2) {
            line(image, pair[0], pair[1], *colour, 2);
        }
        for &(x, y) in &pixels {
            line(image, (x - 2, y), (x + 2, y), *colour, 3);
        }
    }
}

/// 3×5 glyphs, one row of 3 bits per line (most significant bit = left column).
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' | 'O' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' | 'S' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b001, 0b001, 0b001],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        '.' => [0b000, 0b000, 0b000, 0b000, 0b010],
        '%' => [0b101, 0b001, 0b010, 0b100, 0b101],
        'A' => [0b010, 0b101, 0b111, 0b101, 0b101],
        'C' => [0b111, 0b100, 0b100, 0b100, 0b111],
        'E' => [0b111, 0b100, 0b111, 0b100, 0b111],
        'H' => [0b101, 0b101, 0b111, 0b101, 0b101],
        'I' => [0b111, 0b010, 0b010, 0b010, 0b111],
        'L' => [0b100, 0b100, 0b100, 0b100, 0b111],
        'N' => [0b110, 0b101, 0b101, 0b101, 0b101],
        'P' => [0b111, 0b101, 0b111, 0b100, 0b100],
        'R' => [0b110, 0b101, 0b110, 0b101, 0b101],
        'T' => [0b111, 0b010, 0b010, 0b010, 0b010],
        'U' => [0b101, 0b101, 0b101, 0b101, 0b111],
        'Y' => [0b101, 0b101, 0b010, 0b010, 0b010],
        _ => [0; 5], // space and anything else
    }
}

/// Text scaled ×2 (6×10 pixels a character, 8 apart) with its top-left corner at (x, y).
fn text(image: &mut RgbImage, x: i64, y: i64, text: &str, colour: Rgb<u8>) {
    for (i, c) in text.chars().enumerate() {
        for (row, bits) in glyph(c.to_ascii_uppercase()).iter().enumerate() {
            for column in 0..3 {
                if bits >> (2 - column) & 1 == 1 {
                    for (dx, dy) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        put(
                            image,
                            x + 8 * i as i64 + 2 * column + dx,
                            y + 2 * row as i64 + dy,
                            colour,
                        );
                    }
                }
            }
        }
    }
}

/// Pixel width of `text` drawn by [`text`].
fn text_width(text: &str) -> i64 {
    8 * text.chars().count() as i64 - 2
}

/// The loss panel (left) and the accuracy panel (right) for `last_epoch` epochs and losses up to `max_loss`.
fn panels(last_epoch: f64, max_loss: f64) -> [Panel; 2] {
    let half = WIDTH as i64 / 2;
    let panel = |index: i64, y_range| Panel {
        left: index * half + MARGIN_LEFT,
        top: MARGIN_Y,
        width: half - MARGIN_LEFT - MARGIN_RIGHT,
        height: HEIGHT as i64 - 2 * MARGIN_Y,
        x_range: (0.0, last_epoch),
        y_range,
    };
    [panel(0, (0.0, max_loss)), panel(1, (0.0, 1.0))]
}

/// The learning-curve image of `rows` (loss left, accuracy right).
pub fn learning_curve(rows: &[MetricsRow]) -> RgbImage {
    let mut image = RgbImage::from_pixel(WIDTH, HEIGHT, Rgb([255, 255, 255]));
    let last_epoch = rows.iter().map(|r| r.epoch).max().unwrap_or(1).max(1) as f64;
    let finite_losses = rows
        .iter()
        .flat_map(|r| [Some(r.train_loss), r.test_loss])
        .flatten()
        .filter(|v| v.is_finite());
    let max_loss = finite_losses.fold(0.0f32, f32::max).max(1e-3) as f64 * 1.05;
    // The points of one series: epochs without a (finite) value are skipped,
    // so a test series evaluated every few epochs joins the epochs it has.
    let series = |f: fn(&MetricsRow) -> Option<f32>| -> Vec<(f64, f64)> {
        rows.iter()
            .filter_map(|r| f(r).filter(|v| v.is_finite()).map(|v| (r.epoch as f64, v as f64)))
            .collect()
    };
    let [loss_panel, accuracy_panel] = panels(last_epoch, max_loss);
    draw_panel(
        &mut image,
        &loss_panel,
        &[
            (series(|r| Some(r.train_loss)), TRAIN_COLOUR),
            (series(|r| r.test_loss), TEST_COLOUR),
        ],
    );
    draw_panel(
        &mut image,
        &accuracy_panel,
        &[
            (series(|r| Some(r.train_accuracy)), TRAIN_COLOUR),
            (series(|r| r.test_accuracy), TEST_COLOUR),
        ],
    );
    // Labels: title, y range, last epoch, legend.
    for (panel, title, top_label) in [
        (&loss_panel, "LOSS", format!("{max_loss:.2}")),
        (&accuracy_panel, "ACCURACY %", "100".to_string()),
    ] {
        let bottom = panel.top + panel.height;
        text(&mut image, panel.left, panel.top - 20, title, AXIS_COLOUR);
        text(
            &mut image,
            panel.left - 8 - text_width(&top_label),
            panel.top - 4,
            &top_label,
            AXIS_COLOUR,
        );
        text(&mut image, panel.left - 14, bottom - 4, "0", AXIS_COLOUR);
        let epochs = format!("{}", last_epoch as usize);
        text(
            &mut image,
            panel.left + panel.width - text_width(&epochs) / 2,
            bottom + 10,
            &epochs,
            AXIS_COLOUR,
        );
        text(
            &mut image,
            panel.left + panel.width / 2 - text_width("EPOCH") / 2,
            bottom + 10,
            "EPOCH",
            AXIS_COLOUR,
        );
    }
    let legend_x = loss_panel.left + loss_panel.width - text_width("TRAIN TEST");
    text(&mut image, legend_x, loss_panel.top - 20, "TRAIN", TRAIN_COLOUR);
    text(
        &mut image,
        legend_x + 48,
        loss_panel.top - 20,
        "TEST",
        TEST_COLOUR,
    );
    image
}

/// Writes the learning curve of `rows` to `path` as a PNG (atomically).
pub fn write_learning_curve(path: &Path, rows: &[MetricsRow]) -> Result<()> {
    let image = learning_curve(rows);
    let mut bytes = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| Error::file(path, format!("cannot encode the learning curve: {e}")))?;
    write_atomically(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<MetricsRow> {
        (1..=3)
            .map(|e| MetricsRow {
                epoch: e,
                learning_rate: 0.1 / e as f32,
                train_loss: 2.0 / e as f32,
                train_accuracy: 0.2 * e as f32,
                test_loss: Some(2.2 / e as f32),
                test_accuracy: Some(0.18 * e as f32),
                images_per_second: 1234.5,
                elapsed_seconds: 10.0 * e as f64,
            })
            .collect()
    }

    #[test]
    fn csv_round_trip_and_bad_file() {
        let dir = std::env::temp_dir().join(format!("sbfnet-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.csv");
        write_csv(&path, &rows()).unwrap();
        let back = read_csv(&path).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[2].epoch, 3);
        assert!((back[1].test_accuracy.unwrap() - 0.36).abs() < 1e-5);
        std::fs::write(&path, "a,b\n").unwrap();
        assert!(read_csv(&path)
            .unwrap_err()
            .to_string()
            .contains("not an sbfnet metrics file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn epochs_without_evaluation_round_trip_as_empty_fields() {
        let dir = std::env::temp_dir().join(format!("sbfnet-metrics-sparse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.csv");
        let mut sparse = rows();
        sparse[1].test_loss = None;
        sparse[1].test_accuracy = None;
        write_csv(&path, &sparse).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text
            .lines()
            .nth(2)
            .unwrap()
            .starts_with("2,0.050000,1.00000,0.40000,,,"));
        let back = read_csv(&path).unwrap();
        assert_eq!((back[1].test_loss, back[1].test_accuracy), (None, None));
        assert!((back[2].test_accuracy.unwrap() - 0.54).abs() < 1e-5);
        // The test series joins epochs 1 and 3: the line passes through the
        // middle of the accuracy panel's epoch 2 at (0.18 + 0.54) / 2.
        let image = learning_curve(&sparse);
        let [_, accuracy] = panels(3.0, 2.2 * 1.05);
        let (x, y) = accuracy.pixel(2.0, 0.36);
        assert_eq!(*image.get_pixel(x as u32, y as u32), TEST_COLOUR);
        // A field that is neither empty nor a number is still refused.
        std::fs::write(&path, format!("{CSV_HEADER}\n1,0.1,2.0,0.2,x,0.5,10.0,1.0\n")).unwrap();
        assert!(read_csv(&path)
            .unwrap_err()
            .to_string()
            .contains("malformed metrics row"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn curve_draws_both_series_in_both_panels() {
        let image = learning_curve(&rows());
        let count = |colour: Rgb<u8>, left_half: bool| {
            image
                .enumerate_pixels()
                .filter(|(x, _, p)| **p == colour && ((*x < WIDTH / 2) == left_half))
                .count()
        };
        for colour in [TRAIN_COLOUR, TEST_COLOUR] {
            assert!(count(colour, true) > 100 && count(colour, false) > 100);
        }
        // The accuracy panel: the last training point (epoch 3, 0.6) is drawn 60 % up the panel
        // and the last test point (0.54) below it.
        let [_, accuracy] = panels(3.0, 2.2 * 1.05);
        let (x, y) = accuracy.pixel(3.0, 0.6);
        assert_eq!(
            y,
            accuracy.top + accuracy.height - (0.6 * accuracy.height as f64).round() as i64
        );
        assert_eq!(*image.get_pixel(x as u32 - 1, y as u32), TRAIN_COLOUR);
        let (x, y) = accuracy.pixel(3.0, 0.54);
        assert_eq!(*image.get_pixel(x as u32 - 1, y as u32), TEST_COLOUR);
    }
}
