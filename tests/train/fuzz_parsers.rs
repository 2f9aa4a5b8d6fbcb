//! Fuzzing the two readers of untrusted bytes (issue 7): the CIFAR-10 record parser
//! (`data::cifar::parse_records`) and the checkpoint reader (`Checkpoint::from_bytes`).
//!
//! cargo-fuzz needs a nightly compiler; this is the stable-Rust version of the same idea: a seeded
//! mutation loop. Each case starts from a valid input (random checkpoints, random records) and
//! applies 1–4 structure-aware mutations — length and count fields set to huge or off-by-one values,
//! tensor dimensions set to values whose product overflows, bits flipped, bytes inserted, ranges
//! deleted or duplicated, truncation — and then, most of the time, recomputes the checksum so the
//! mutated structure reaches the parser instead of stopping at the checksum test. A fifth of the
//! cases are plain random bytes. Every case must
//! - return (no panic), within a second (no hang),
//! - allocate at most `ALLOWED_BYTES_PER_INPUT_BYTE × input + ALLOWED_EXTRA_BYTES` bytes at its peak
//!   (measured by the counting global allocator below, per thread),
//! - on success, re-encode to exactly the input (the formats have one encoding),
//! - on failure, give one line that names the file.
//!
//! Default: 100 000 cases per parser (about a second). For the long run:
//! `SBFNET_FUZZ_CASES=1000000 cargo test --release --test fuzz_parsers -- --nocapture`;
//! `SBFNET_FUZZ_SEED=<n>` changes the seed. A failing input is written to
//! `target/tmp/fuzz-failure-<parser>-<case>.bin`.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sbfnet::checkpoint::{fnv1a64, Checkpoint};
use sbfnet::data::cifar::{self, Cifar10, IMAGE_BYTES, RECORD_BYTES};
use sbfnet::Tensor;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// A global allocator that counts, per thread, the bytes live now and the peak since a reset.

struct CountingAllocator;

thread_local! {
    static LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
    static PEAK_BYTES: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    // try_with: the allocator is also called while a thread's locals are being torn down.
    let _ = LIVE_BYTES.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK_BYTES.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = System.alloc(layout);
        if !pointer.is_null() {
            count(layout.size() as isize);
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let pointer = System.alloc_zeroed(layout);
        if !pointer.is_null() {
            count(layout.size() as isize);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        System.dealloc(pointer, layout);
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = System.realloc(pointer, layout, new_size);
        if !moved.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Runs `f` and returns its result and the most bytes it had allocated at once (on this thread).
fn peak_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE_BYTES.with(|live| live.get());
    PEAK_BYTES.with(|peak| peak.set(start));
    let result = f();
    let peak = PEAK_BYTES.with(|peak| peak.get());
    (result, (peak - start).max(0) as usize)
}

/// The allocation bound per case: a parse keeps what it returns (at most a few times the input:
/// a 72-byte `(String, Tensor)` entry per 8 input bytes, Vec doubling) plus error text.
const ALLOWED_BYTES_PER_INPUT_BYTE: usize = 32;
const ALLOWED_EXTRA_BYTES: usize = 64 * 1024;
const SLOWEST_ALLOWED: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// The loop.

fn cases() -> u64 {
    std::env::var("SBFNET_FUZZ_CASES")
        .ok()
        .map(|v| v.parse().expect("SBFNET_FUZZ_CASES must be a number"))
        .unwrap_or(100_000)
}

fn base_seed() -> u64 {
    std::env::var("SBFNET_FUZZ_SEED")
        .ok()
        .map(|v| v.parse().expect("SBFNET_FUZZ_SEED must be a number"))
        .unwrap_or(0x5bf_7e57)
}

/// What one parse gave, for the statistics.
enum Outcome {
    Accepted,
    /// The first words of the error (its kind).
    Refused(String),
}

/// Feeds `cases()` inputs from `generate` to `parse_and_check`, enforcing the time and allocation
/// bounds and catching panics. Returns how many were accepted and a histogram of error kinds.
fn fuzz(
    parser: &str,
    generate: impl Fn(&mut SmallRng) -> Vec<u8>,
    parse_and_check: impl Fn(&[u8]) -> Result<Outcome, String>,
) -> (u64, std::collections::BTreeMap<String, u64>) {
    let cases = cases();
    let seed = base_seed();
    let started = Instant::now();
    let mut accepted = 0;
    let mut refusals = std::collections::BTreeMap::new();
    let mut largest_ratio = 0.0f64;
    for case in 0..cases {
        let mut rng = SmallRng::seed_from_u64(seed ^ case.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let input = generate(&mut rng);
        let clock = Instant::now();
        let (result, peak) = peak_allocation(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse_and_check(&input)))
        });
        let elapsed = clock.elapsed();
        let allowed = ALLOWED_BYTES_PER_INPUT_BYTE * input.len() + ALLOWED_EXTRA_BYTES;
        let problem = match result {
            Err(_) => Some("panicked".to_string()),
            Ok(Err(broken)) => Some(broken),
            Ok(Ok(_)) if elapsed > SLOWEST_ALLOWED => Some(format!("took {elapsed:?}")),
            Ok(Ok(_)) if peak > allowed => Some(format!(
                "allocated {peak} bytes for a {}-byte input (allowed {allowed})",
                input.len()
            )),
            Ok(Ok(Outcome::Accepted)) => {
                accepted += 1;
                None
            }
            Ok(Ok(Outcome::Refused(kind))) => {
                *refusals.entry(kind).or_insert(0) += 1;
                None
            }
        };
        if input.len() >= 256 {
            largest_ratio = largest_ratio.max(peak as f64 / input.len() as f64);
        }
        if let Some(problem) = problem {
            let saved =
                Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz-failure-{parser}-{case}.bin"));
            let _ = std::fs::write(&saved, &input);
            panic!(
                "{parser}, case {case} (SBFNET_FUZZ_SEED={seed}): {problem}; input ({} bytes) saved to {}",
                input.len(),
                saved.display()
            );
        }
    }
    eprintln!(
        "{parser}: {cases} cases in {:.2?} ({accepted} accepted; peak allocation at most {largest_ratio:.1}× \
         the input for inputs of 256 bytes or more); refusals: {refusals:?}",
        started.elapsed()
    );
    (accepted, refusals)
}

/// The first few words of an error message, with the file name removed: its kind.
fn error_kind(message: &str, path: &str) -> String {
    let rest = message.strip_prefix(path).unwrap_or(message);
    rest.trim_start_matches(": ")
        .split(|c: char| c.is_ascii_digit() || c == '"' || c == '(')
        .next()
        .unwrap_or("")
        .trim_end_matches([' ', ':'])
        .to_string()
}

fn check_error_line(error: &sbfnet::Error, path: &Path) -> Result<Outcome, String> {
    let text = error.to_string();
    if error.path.as_deref() != Some(path) || !text.starts_with(&format!("{}: ", path.display())) {
        return Err(format!("error does not name the file: {text:?}"));
    }
    if text.contains(['\n', '\r']) {
        return Err(format!("error is not one line: {text:?}"));
    }
    if text.len() > 400 {
        return Err(format!(
            "error is {} characters long: {:?}…",
            text.len(),
            &text[..200]
        ));
    }
    Ok(Outcome::Refused(error_kind(&text, &path.display().to_string())))
}

// ---------------------------------------------------------------------------------------------
// Mutations shared by both formats.

/// Values that break length arithmetic: zero, one, the sign bit, all ones, and near the input size.
fn interesting_u32(rng: &mut SmallRng, input_len: usize) -> u32 {
    let near = input_len as u32;
    match rng.gen_range(0..10) {
        0 => 0,
        1 => 1,
        2 => u32::MAX,
        3 => u32::MAX - 1,
        4 => 0x8000_0000,
        5 => 0x7fff_ffff,
        6 => near,
        7 => near.wrapping_add(rng.gen_range(1..16)),
        8 => near / rng.gen_range(2..9),
        _ => rng.gen(),
    }
}

fn interesting_u64(rng: &mut SmallRng) -> u64 {
    match rng.gen_range(0..9) {
        0 => 0,
        1 => 1,
        2 => u64::MAX,
        3 => 1 << 62,
        4 => (1 << 61) + 1,
        5 => 1 << 32,
        6 => u32::MAX as u64 + 1,
        7 => rng.gen_range(2..64),
        _ => rng.gen(),
    }
}

/// One byte-level mutation anywhere: flip, overwrite, insert, delete, duplicate, truncate.
fn mutate_bytes(rng: &mut SmallRng, bytes: &mut Vec<u8>) {
    let len = bytes.len();
    match rng.gen_range(0..7) {
        0 if len > 0 => {
            let at = rng.gen_range(0..len);
            bytes[at] ^= 1 << rng.gen_range(0..8);
        }
        1 if len > 0 => {
            let at = rng.gen_range(0..len);
            bytes[at] = [0, 0xff, 0x7f, 0x80, 10, rng.gen()][rng.gen_range(0..6)];
        }
        2 => {
            let at = rng.gen_range(0..=len);
            let count = rng.gen_range(1..=16);
            let inserted: Vec<u8> = (0..count).map(|_| rng.gen()).collect();
            bytes.splice(at..at, inserted);
        }
        3 if len > 0 => {
            let start = rng.gen_range(0..len);
            let end = rng.gen_range(start..=len.min(start + 64));
            bytes.drain(start..end);
        }
        4 if len > 0 => {
            let start = rng.gen_range(0..len);
            let end = rng.gen_range(start..=len.min(start + 64));
            let copy = bytes[start..end].to_vec();
            let at = rng.gen_range(0..=bytes.len());
            bytes.splice(at..at, copy);
        }
        5 => bytes.truncate(rng.gen_range(0..=len)),
        _ => {
            if len > 4 {
                let at = rng.gen_range(0..len - 4);
                let value = interesting_u32(rng, len);
                bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
            }
        }
    }
}

fn random_bytes(rng: &mut SmallRng, max_len: usize) -> Vec<u8> {
    let len = rng.gen_range(0..=max_len);
    (0..len).map(|_| rng.gen()).collect()
}

// ---------------------------------------------------------------------------------------------
// Checkpoints.

fn random_string(rng: &mut SmallRng) -> String {
    let pieces = [
        "conv", ".", "weight", "bn", "é", "模型", "\n", "\"", " ", "\u{0}", "1",
    ];
    (0..rng.gen_range(0..6))
        .map(|_| pieces[rng.gen_range(0..pieces.len())])
        .collect()
}

fn random_checkpoint(rng: &mut SmallRng) -> Checkpoint {
    let metadata = (0..rng.gen_range(0..4))
        .map(|_| (random_string(rng), random_string(rng)))
        .collect();
    let tensors = (0..rng.gen_range(0..4))
        .map(|_| {
            let shape: Vec<usize> = (0..rng.gen_range(0..4)).map(|_| rng.gen_range(0..4)).collect();
            let data = (0..shape.iter().product::<usize>())
                .map(|_| rng.gen::<f32>() - 0.5)
                .collect();
            (random_string(rng), Tensor { shape, data })
        })
        .collect();
    Checkpoint {
        model: random_string(rng),
        metadata,
        tensors,
    }
}

/// Byte offsets of the length, count and dimension fields of `checkpoint.to_bytes()`:
/// (offset, width 4 or 8). Walks the layout documented in train/checkpoint.rs.
fn field_offsets(checkpoint: &Checkpoint) -> Vec<(usize, usize)> {
    let mut fields = Vec::new();
    let mut at = 12; // magic, version
    let string = |at: &mut usize, fields: &mut Vec<(usize, usize)>, s: &str| {
        fields.push((*at, 4));
        *at += 4 + s.len();
    };
    string(&mut at, &mut fields, &checkpoint.model);
    fields.push((at, 4));
    at += 4;
    for (key, value) in &checkpoint.metadata {
        string(&mut at, &mut fields, key);
        string(&mut at, &mut fields, value);
    }
    fields.push((at, 4));
    at += 4;
    for (name, tensor) in &checkpoint.tensors {
        string(&mut at, &mut fields, name);
        fields.push((at, 4));
        at += 4;
        for _ in &tensor.shape {
            fields.push((at, 8));
            at += 8;
        }
        at += 4 * tensor.data.len();
    }
    fields
}

/// Recomputes the trailing FNV-1a checksum so that a mutated body reaches the structure parser.
fn reseal(bytes: &mut [u8]) {
    if bytes.len() >= 20 {
        let body = bytes.len() - 8;
        let sum = fnv1a64(&bytes[..body]);
        bytes[body..].copy_from_slice(&sum.to_le_bytes());
    }
}

fn checkpoint_input(rng: &mut SmallRng) -> Vec<u8> {
    if rng.gen_bool(0.2) {
        // Random bytes, half of them behind a valid magic and version, sealed.
        let mut bytes = random_bytes(rng, 256);
        if rng.gen_bool(0.5) {
            let mut head = b"SBFNETCK\x01\x00\x00\x00".to_vec();
            head.extend(bytes);
            bytes = head;
            reseal(&mut bytes);
        }
        return bytes;
    }
    let checkpoint = random_checkpoint(rng);
    let mut bytes = checkpoint.to_bytes();
    let fields = field_offsets(&checkpoint);
    for _ in 0..rng.gen_range(1..=4) {
        if rng.gen_bool(0.5) {
            // Structure-aware: a length, count or dimension set to a hostile value.
            let (at, width) = fields[rng.gen_range(0..fields.len())];
            if at + width <= bytes.len() {
                if width == 4 {
                    let value = interesting_u32(rng, bytes.len());
                    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
                } else {
                    let value = interesting_u64(rng);
                    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
                }
            }
        } else {
            mutate_bytes(rng, &mut bytes);
        }
    }
    if rng.gen_bool(0.9) {
        reseal(&mut bytes);
    }
    bytes
}

fn check_checkpoint(bytes: &[u8]) -> Result<Outcome, String> {
    let path = Path::new("fuzz/case.ckpt");
    match Checkpoint::from_bytes(bytes, path) {
        Ok(checkpoint) => {
            for (name, tensor) in &checkpoint.tensors {
                let elements = tensor.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
                if elements != Some(tensor.data.len()) {
                    return Err(format!(
                        "tensor {name:?}: shape {:?} but {} values",
                        tensor.shape,
                        tensor.data.len()
                    ));
                }
            }
            if checkpoint.to_bytes() != bytes {
                return Err("accepted, but does not re-encode to the same bytes".into());
            }
            Ok(Outcome::Accepted)
        }
        Err(error) => check_error_line(&error, path),
    }
}

#[test]
fn checkpoint_reader_survives_mutated_and_random_inputs() {
    let (accepted, refusals) = fuzz("checkpoint", checkpoint_input, check_checkpoint);
    // The mutations must get past the checksum into the structure parser, or this fuzzes nothing.
    let cases = cases();
    assert!(
        accepted > cases / 100,
        "only {accepted} of {cases} inputs accepted"
    );
    let structural: u64 = refusals
        .iter()
        .filter(|(kind, _)| kind.starts_with("malformed checkpoint"))
        .map(|(_, n)| n)
        .sum();
    assert!(
        structural > cases / 10,
        "only {structural} structural refusals: {refusals:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// CIFAR-10 records.

fn cifar_input(rng: &mut SmallRng) -> Vec<u8> {
    if rng.gen_bool(0.2) {
        // Random bytes of a length at or next to a whole number of records, or any length.
        let records = rng.gen_range(0..3);
        let len = match rng.gen_range(0..4) {
            0 => records * RECORD_BYTES,
            1 => (records * RECORD_BYTES).saturating_sub(1),
            2 => records * RECORD_BYTES + 1,
            _ => rng.gen_range(0..3 * RECORD_BYTES),
        };
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if rng.gen_bool(0.5) {
            // Mostly valid labels, so that some inputs are accepted.
            for record in bytes.chunks_mut(RECORD_BYTES) {
                record[0] %= 10;
            }
        }
        return bytes;
    }
    let count = rng.gen_range(1..=3);
    let set = Cifar10 {
        labels: (0..count).map(|_| rng.gen_range(0..10)).collect(),
        images: (0..count * IMAGE_BYTES).map(|_| rng.gen()).collect(),
    };
    let mut bytes = cifar::to_records(&set);
    for _ in 0..rng.gen_range(1..=3) {
        match rng.gen_range(0..4) {
            // Structure-aware: a label byte set to any value.
            0 => {
                let record = rng.gen_range(0..bytes.len().div_ceil(RECORD_BYTES).max(1));
                if let Some(label) = bytes.get_mut(record * RECORD_BYTES) {
                    *label = rng.gen();
                }
            }
            // Structure-aware: a record cut, or one more partial record.
            1 => {
                let cut = rng.gen_range(0..=bytes.len());
                bytes.truncate(cut);
            }
            2 => {
                let extra = rng.gen_range(0..RECORD_BYTES + 2);
                bytes.extend((0..extra).map(|_| rng.gen::<u8>() % 12));
            }
            _ => mutate_bytes(rng, &mut bytes),
        }
    }
    bytes
}

fn check_cifar(bytes: &[u8]) -> Result<Outcome, String> {
    let path = Path::new("fuzz/data_batch_1.bin");
    match cifar::parse_records(bytes, path) {
        Ok(set) => {
            if set.labels.iter().any(|&label| label >= 10) {
                return Err("accepted a label above 9".into());
            }
            if set.images.len() != set.labels.len() * IMAGE_BYTES || cifar::to_records(&set) != bytes {
                return Err("accepted, but does not re-encode to the same bytes".into());
            }
            Ok(Outcome::Accepted)
        }
        Err(error) => check_error_line(&error, path),
    }
}

#[test]
fn cifar_record_parser_survives_mutated_and_random_inputs() {
    let (accepted, refusals) = fuzz("cifar_records", cifar_input, check_cifar);
    let cases = cases();
    assert!(
        accepted > cases / 20,
        "only {accepted} of {cases} inputs accepted"
    );
    assert!(refusals.len() >= 3, "too few kinds of refusal: {refusals:?}");
}

// ---------------------------------------------------------------------------------------------
// The harness itself must be able to fail.

#[test]
fn the_allocation_counter_sees_a_large_allocation() {
    let (_, peak) = peak_allocation(|| std::hint::black_box(vec![1u8; 10 << 20]).len());
    assert!(peak >= 10 << 20, "peak {peak}");
    let (_, peak) = peak_allocation(|| std::hint::black_box(3 + 4));
    assert_eq!(peak, 0);
}

#[test]
fn the_fuzzer_reports_a_parser_that_panics_or_over_allocates() {
    let panicking = std::panic::catch_unwind(|| {
        fuzz(
            "test_panic",
            |rng| random_bytes(rng, 8),
            |bytes| {
                assert!(bytes.len() < 4, "a deliberate panic");
                Ok(Outcome::Accepted)
            },
        )
    });
    assert!(panicking.is_err());
    let hungry = std::panic::catch_unwind(|| {
        fuzz(
            "test_hungry",
            |rng| random_bytes(rng, 8),
            |bytes| {
                let reserved: Vec<u64> = Vec::with_capacity(1 << 20);
                Ok(if reserved.capacity() > bytes.len() {
                    Outcome::Accepted
                } else {
                    Outcome::Refused(String::new())
                })
            },
        )
    });
    assert!(hungry.is_err());
    for entry in std::fs::read_dir(env!("CARGO_TARGET_TMPDIR")).unwrap().flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("fuzz-failure-test_")
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
