//! Draws an SBF layer's templates and the filters derived from them, one panel per transform
//! family (scalar masks, rotation, affine). In each panel the top row holds the M templates;
//! beneath each template, its transformed copies (the effective filters Weff of the outputs
//! assigned to it). Taps are blocks; red is positive, blue negative, white zero (one colour
//! scale per column).
//!
//! `cargo run --release --example draw_filters -- [out.png]` (default `sbf_filters.png`).

use image::{Rgb, RgbImage};
use rand::{rngs::StdRng, Rng, SeedableRng};
use sbfnet::nn::SbfConv2d;
use sbfnet::ops::sbf::{SbfConfig, TemplateAssignment, TransformFamily};
use sbfnet::{ParamStore, Tensor};

const KERNEL: usize = 5;
const TEMPLATES: usize = 4;
const OUTPUTS: usize = 16; // 4 copies per template (1 identity + 3 transformed)
const TAP_PIXELS: u32 = 10;
const GAP: u32 = 6;

/// Structured 5×5 templates (one input channel): a vertical edge, a diagonal bar, a centre-surround
/// blob and an off-centre corner, so transformations are easy to see.
fn templates() -> Tensor {
    let c = (KERNEL as f32 - 1.0) / 2.0;
    let mut data = Vec::new();
    for m in 0..TEMPLATES {
        for kh in 0..KERNEL {
            for kw in 0..KERNEL {
                let (u, v) = (kw as f32 - c, kh as f32 - c);
                data.push(match m {
                    0 => (u * 1.2).tanh(),
                    1 => (-(u - v).powi(2) / 1.5).exp() - 0.3,
                    2 => (-(u * u + v * v) / 1.2).exp() - 0.5 * (-(u * u + v * v) / 5.0).exp(),
                    _ => (-((u - 1.0).powi(2) + (v + 1.0).powi(2)) / 1.0).exp() - 0.2,
                });
            }
        }
    }
    Tensor::from_vec(&[TEMPLATES, 1, KERNEL, KERNEL], data)
}

/// Transform parameters of the 12 transformed outputs for `family` (G = 1).
fn transforms(family: TransformFamily, rng: &mut StdRng) -> Tensor {
    let count = OUTPUTS - TEMPLATES;
    let data: Vec<f32> = (0..count)
        .flat_map(|r| match family {
            TransformFamily::Scalar => (0..KERNEL * KERNEL)
                .map(|_| rng.gen_range(-0.5..1.5))
                .collect::<Vec<_>>(),
            TransformFamily::Rotation => vec![(r / TEMPLATES + 1) as f32 * std::f32::consts::FRAC_PI_4],
            TransformFamily::Affine => {
                let mut a = vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
                a.iter_mut().for_each(|v| *v += rng.gen_range(-0.45..0.45));
                a
            }
            TransformFamily::Zero => vec![], // plain pruning: nothing to draw but zeros
        })
        .collect();
    Tensor::from_vec(&family.param_shape(count, 1, KERNEL), data)
}

/// Diverging colour: red for positive, blue for negative, scaled by `scale`.
fn colour(value: f32, scale: f32) -> Rgb<u8> {
    let a = (value.abs() / scale).min(1.0);
    let fade = (255.0 * (1.0 - a)) as u8;
    if value >= 0.0 {
        Rgb([255, fade, fade])
    } else {
        Rgb([fade, fade, 255])
    }
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "sbf_filters.png".to_string());
    let mut rng = StdRng::seed_from_u64(7);
    let families = [
        TransformFamily::Scalar,
        TransformFamily::Rotation,
        TransformFamily::Affine,
    ];
    let filter_px = KERNEL as u32 * TAP_PIXELS;
    let rows = OUTPUTS / TEMPLATES; // template row + 3 rows of copies
    let panel_w = TEMPLATES as u32 * (filter_px + GAP) + GAP;
    let panel_h = rows as u32 * (filter_px + GAP) + 2 * GAP; // extra gap under the template row
    let mut canvas = RgbImage::from_pixel(
        families.len() as u32 * (panel_w + GAP),
        panel_h,
        Rgb([40, 40, 40]),
    );
    for (f, &family) in families.iter().enumerate() {
        let mut store = ParamStore::default();
        let config = SbfConfig {
            family,
            ..SbfConfig::new(1, 2, 1)
        };
        let layer = SbfConv2d::from_parts(
            &mut store,
            family.name(),
            templates(),
            transforms(family, &mut rng),
            None,
            TemplateAssignment::round_robin(OUTPUTS, TEMPLATES),
            config,
        );
        let weff = layer.effective_weight(&store); // [N, 1, K, K]
        let filter = KERNEL * KERNEL;
        // One colour scale per column (a template and its copies), so faint templates stay visible.
        let scales: Vec<f32> = (0..TEMPLATES)
            .map(|column| {
                (column..OUTPUTS)
                    .step_by(TEMPLATES)
                    .flat_map(|n| weff.data[n * filter..(n + 1) * filter].iter().map(|v| v.abs()))
                    .fold(1e-6, f32::max)
            })
            .collect();
        // Output n copies template n mod M: column n mod M, row n / M (row 0 = identity = the template).
        for n in 0..OUTPUTS {
            let (column, row) = ((n % TEMPLATES) as u32, (n / TEMPLATES) as u32);
            let x0 = f as u32 * (panel_w + GAP) + GAP + column * (filter_px + GAP);
            let y0 = GAP + row * (filter_px + GAP) + if row > 0 { GAP } else { 0 };
            for kh in 0..KERNEL {
                for kw in 0..KERNEL {
                    let c = colour(
                        weff.data[(n * KERNEL + kh) * KERNEL + kw],
                        scales[column as usize],
                    );
                    for dy in 0..TAP_PIXELS {
                        for dx in 0..TAP_PIXELS {
                            canvas.put_pixel(
                                x0 + kw as u32 * TAP_PIXELS + dx,
                                y0 + kh as u32 * TAP_PIXELS + dy,
                                c,
                            );
                        }
                    }
                }
            }
        }
    }
    match canvas.save(&path) {
        Ok(()) => println!(
            "wrote {path}: panels scalar | rotation | affine; top row = templates, below = transformed copies"
        ),
        Err(e) => {
            eprintln!("draw_filters: cannot write {path}: {e}");
            std::process::exit(1);
        }
    }
}
