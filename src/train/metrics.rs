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
const HEIGHT: u32 = 340;
/// Space left of each panel (for the y labels) and above/below it (titles, x labels).
const MARGIN_LEFT: i64 = 48;
const MARGIN_RIGHT: i64 = 16;
const MARGIN_Y: i64 = 30;
pub(crate) const TRAIN_COLOUR: Rgb<u8> = Rgb([31, 119, 180]);
pub(crate) const TEST_COLOUR: Rgb<u8> = Rgb([255, 127, 14]);
pub(crate) const AXIS_COLOUR: Rgb<u8> = Rgb([0, 0, 0]);
const GRID_COLOUR: Rgb<u8> = Rgb([225, 225, 225]);

/// A rectangle of the image that maps data coordinates to pixels.
pub(crate) struct Panel {
    pub(crate) left: i64,
    pub(crate) top: i64,
    pub(crate) width: i64,
    pub(crate) height: i64,
    pub(crate) x_range: (f64, f64),
    pub(crate) y_range: (f64, f64),
}

impl Panel {
    /// Pixel of data point (x, y); y grows upwards.
    pub(crate) fn pixel(&self, x: f64, y: f64) -> (i64, i64) {
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
pub(crate) fn line(
    image: &mut RgbImage,
    (x0, y0): (i64, i64),
    (x1, y1): (i64, i64),
    colour: Rgb<u8>,
    thickness: i64,
) {
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
pub(crate) type Series = (Vec<(f64, f64)>, Rgb<u8>);

/// Axes, grid, and one polyline (with point markers) per series.
pub(crate) fn draw_panel(image: &mut RgbImage, panel: &Panel, series: &[Series]) {
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
        'B' => [0b110, 0b101, 0b110, 0b101, 0b110],
        'D' => [0b110, 0b101, 0b101, 0b101, 0b110],
        'F' => [0b111, 0b100, 0b111, 0b100, 0b100],
        'G' => [0b111, 0b100, 0b101, 0b101, 0b111],
        'K' => [0b101, 0b101, 0b110, 0b101, 0b101],
        'M' => [0b101, 0b111, 0b111, 0b101, 0b101],
        'V' => [0b101, 0b101, 0b101, 0b101, 0b010],
        'W' => [0b101, 0b101, 0b111, 0b111, 0b101],
        'X' => [0b101, 0b101, 0b010, 0b101, 0b101],
        '-' => [0b000, 0b000, 0b111, 0b000, 0b000],
        '/' => [0b001, 0b001, 0b010, 0b100, 0b100],
        '+' => [0b000, 0b010, 0b111, 0b010, 0b000],
        _ => [0; 5], // space and anything else
    }
}

/// Text scaled ×2 (6×10 pixels a character, 8 apart) with its top-left corner at (x, y).
pub(crate) fn text(image: &mut RgbImage, x: i64, y: i64, text: &str, colour: Rgb<u8>) {
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
pub(crate) fn text_width(text: &str) -> i64 {
    8 * text.chars().count() as i64 - 2
}

/// Labels under the x axis and left of the y axis at data coordinates (the ticks' values).
pub(crate) fn tick_labels(
    image: &mut RgbImage,
    panel: &Panel,
    x_ticks: &[(f64, String)],
    y_ticks: &[(f64, String)],
) {
    for (x, label) in x_ticks {
        let (px, py) = panel.pixel(*x, panel.y_range.0);
        line(image, (px, py), (px, py + 4), AXIS_COLOUR, 1);
        text(image, px - text_width(label) / 2, py + 8, label, AXIS_COLOUR);
    }
    for (y, label) in y_ticks {
        let (px, py) = panel.pixel(panel.x_range.0, *y);
        line(image, (px - 4, py), (px, py), AXIS_COLOUR, 1);
        text(image, px - 8 - text_width(label), py - 4, label, AXIS_COLOUR);
    }
}

/// About `count` round tick values from `low` to `high` (steps of 1, 2 or 5 times a power of ten).
pub(crate) fn ticks(low: f64, high: f64, count: usize) -> Vec<f64> {
    let raw = (high - low).max(1e-9) / count.max(1) as f64;
    let power = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|s| *s >= raw)
        .unwrap_or(raw);
    let first = (low / step).ceil() as i64;
    let last = (high / step + 1e-9).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
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

/// Colour of the transformed fraction of a pruning run.
const PRUNED_COLOUR: Rgb<u8> = Rgb([44, 160, 44]);

/// The learning-curve image of `rows` (loss left, accuracy right); `transformed` adds the
/// transformed fraction of a pruning run, (epoch, fraction), to the accuracy panel.
pub fn learning_curve(rows: &[MetricsRow], transformed: &[(usize, f64)]) -> RgbImage {
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
    let fraction: Vec<(f64, f64)> = transformed.iter().map(|&(e, f)| (e as f64, f)).collect();
    draw_panel(
        &mut image,
        &accuracy_panel,
        &[
            (series(|r| Some(r.train_accuracy)), TRAIN_COLOUR),
            (series(|r| r.test_accuracy), TEST_COLOUR),
            (fraction, PRUNED_COLOUR),
        ],
    );
    // Labels: title, tick values on both axes, legend.
    let epoch_ticks: Vec<(f64, String)> = ticks(0.0, last_epoch, 8)
        .into_iter()
        .filter(|e| e.fract() == 0.0)
        .map(|e| (e, format!("{e}")))
        .collect();
    let loss_ticks: Vec<(f64, String)> = ticks(0.0, max_loss, 4)
        .into_iter()
        .map(|v| (v, format!("{v:.1}")))
        .collect();
    let percent_ticks: Vec<(f64, String)> =
        (0..=4).map(|q| (q as f64 / 4.0, format!("{}", 25 * q))).collect();
    for (panel, title, y_ticks) in [
        (&loss_panel, "LOSS", &loss_ticks),
        (&accuracy_panel, "ACCURACY %", &percent_ticks),
    ] {
        text(&mut image, panel.left, panel.top - 20, title, AXIS_COLOUR);
        tick_labels(&mut image, panel, &epoch_ticks, y_ticks);
        let bottom = panel.top + panel.height;
        text(
            &mut image,
            panel.left + panel.width / 2 - text_width("EPOCH") / 2,
            bottom + 20,
            "EPOCH",
            AXIS_COLOUR,
        );
    }
    if !transformed.is_empty() {
        let label = "TRANSFORMED";
        let x = accuracy_panel.left + accuracy_panel.width - text_width(label);
        text(&mut image, x, accuracy_panel.top - 20, label, PRUNED_COLOUR);
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
pub fn write_learning_curve(path: &Path, rows: &[MetricsRow], transformed: &[(usize, f64)]) -> Result<()> {
    let image = learning_curve(rows, transformed);
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
        let image = learning_curve(&sparse, &[]);
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
        let image = learning_curve(&rows(), &[]);
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

    #[test]
    fn a_pruning_curve_draws_the_transformed_fraction_and_the_axes_carry_tick_values() {
        let plain = learning_curve(&rows(), &[]);
        let pruned = learning_curve(&rows(), &[(1, 0.25), (2, 0.5), (3, 0.5)]);
        let green = |image: &RgbImage| image.pixels().filter(|p| **p == PRUNED_COLOUR).count();
        assert_eq!(green(&plain), 0);
        assert!(green(&pruned) > 100);
        let [_, accuracy] = panels(3.0, 2.2 * 1.05);
        let (x, y) = accuracy.pixel(2.5, 0.5);
        assert_eq!(*pruned.get_pixel(x as u32, y as u32), PRUNED_COLOUR);
        // Tick values: epochs 0..3 under the x axis, 0..100 left of the accuracy axis.
        assert_eq!(ticks(0.0, 3.0, 8), [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]);
        assert_eq!(ticks(0.0, 2.31, 4), [0.0, 1.0, 2.0]);
        assert_eq!(ticks(0.0, 41.0, 8), [0.0, 10.0, 20.0, 30.0, 40.0]);
        let ink_below_axis = |image: &RgbImage| {
            let bottom = (accuracy.top + accuracy.height) as u32;
            (bottom + 8..bottom + 18)
                .flat_map(|y| {
                    (accuracy.left as u32..(accuracy.left + accuracy.width) as u32).map(move |x| (x, y))
                })
                .filter(|&(x, y)| *image.get_pixel(x, y) == AXIS_COLOUR)
                .count()
        };
        assert!(ink_below_axis(&plain) > 40, "no tick values under the epoch axis");
    }
}
