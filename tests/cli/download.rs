//! `sbfnet download` against a small generated archive served on 127.0.0.1 by a one-request
//! HTTP server thread: success, wrong checksum, cut-off transfer, HTTP errors, bad content.
//! Every failure must be one clear line naming the URL or file, and must leave no folder behind.

use sbfnet::data::cifar::{self, Cifar10, IMAGE_BYTES, TEST_FILE, TRAINING_FILES};
use sbfnet::data::download::{download_cifar10, md5_hex, FOLDER_NAME};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const RECORDS_PER_FILE: usize = 2;

/// `count` records with labels first_label, first_label+1, … (mod 10) and a recognisable pixel ramp.
fn batch(count: usize, first_label: usize) -> Vec<u8> {
    let mut set = Cifar10::default();
    for i in 0..count {
        let label = (first_label + i) % 10;
        set.labels.push(label as u8);
        set.images
            .extend((0..IMAGE_BYTES).map(|p| ((p + 7 * label) % 256) as u8));
    }
    cifar::to_records(&set)
}

/// The files of a complete small CIFAR-10 folder (name, bytes).
fn complete_files() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = TRAINING_FILES
        .iter()
        .enumerate()
        .map(|(i, name)| (name.to_string(), batch(RECORDS_PER_FILE, i)))
        .collect();
    files.push((TEST_FILE.to_string(), batch(RECORDS_PER_FILE, 5)));
    files.push((
        "batches.meta.txt".into(),
        cifar::CLASS_NAMES.join("\n").into_bytes(),
    ));
    files.push(("readme.html".into(), b"<html>test archive</html>".to_vec()));
    files
}

/// A .tar.gz holding `cifar-10-batches-bin/<name>` for each file, like the official archive.
fn archive(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut folder = tar::Header::new_gnu();
    folder.set_entry_type(tar::EntryType::Directory);
    folder.set_mode(0o755);
    folder.set_size(0);
    builder
        .append_data(&mut folder, format!("{FOLDER_NAME}/"), std::io::empty())
        .unwrap();
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(bytes.len() as u64);
        builder
            .append_data(&mut header, format!("{FOLDER_NAME}/{name}"), bytes.as_slice())
            .unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// What the test server answers to its one request.
enum Reply {
    /// 200 with the whole body.
    Whole(Vec<u8>),
    /// 200 announcing the whole body's Content-Length, then only `sent` bytes, then closing.
    CutOff { body: Vec<u8>, sent: usize },
    /// An error status with a short body.
    Status(u16),
}

/// Serves one request on 127.0.0.1 (any free port), then stops; stops after 10 s if none comes.
/// Returns the URL and the thread, which yields how many requests it answered.
fn serve(reply: Reply) -> (String, JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}/cifar-10-binary.tar.gz", listener.local_addr().unwrap());
    let thread = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((stream, _)) => {
                    answer(stream, &reply);
                    return 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(_) => return 0,
            }
        }
        0
    });
    (url, thread)
}

fn answer(mut stream: TcpStream, reply: &Reply) {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    // Read the request head (bounded).
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    assert!(
        head.starts_with(b"GET /cifar-10-binary.tar.gz "),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let (status, body, sent) = match reply {
        Reply::Whole(body) => ("200 OK".to_string(), body.as_slice(), body.len()),
        Reply::CutOff { body, sent } => ("200 OK".to_string(), body.as_slice(), *sent),
        Reply::Status(code) => (format!("{code} Test"), &b"no such file"[..], 12),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body[..sent]);
    let _ = stream.flush();
}

/// A fresh, empty folder for one test.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("download-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Runs a download expected to fail; checks the error is one line naming `names`, that the server
/// answered once, and that nothing was left in the data folder.
fn expect_failure(test: &str, reply: Reply, md5: Option<&str>, names: &[&str]) -> String {
    let dir = fresh_dir(test);
    let (url, server) = serve(reply);
    let md5 = md5.map(str::to_string).unwrap_or_else(|| "0".repeat(32));
    let error = download_cifar10(&url, &md5, &dir, false).unwrap_err().to_string();
    assert_eq!(
        server.join().unwrap(),
        1,
        "the server should have answered one request"
    );
    assert!(!error.contains('\n'), "not one line: {error}");
    assert!(
        !error.contains(".download-"),
        "names the deleted temporary folder: {error}"
    );
    for name in names {
        let name = name.replace("{url}", &url);
        assert!(error.contains(&name), "error does not name {name:?}: {error}");
    }
    assert_eq!(entries(&dir), Vec::<String>::new(), "left behind after: {error}");
    std::fs::remove_dir_all(&dir).unwrap();
    error
}

#[test]
fn downloads_verifies_unpacks_and_leaves_only_the_folder() {
    let dir = fresh_dir("success");
    let files = complete_files();
    let bytes = archive(&files);
    // A temporary folder of a killed run (a pid no process can have) is cleaned up.
    let stale = dir.join(".cifar-10-batches-bin.download-4294967295-0");
    std::fs::create_dir_all(stale.join(FOLDER_NAME)).unwrap();
    let (url, server) = serve(Reply::Whole(bytes.clone()));
    let folder = download_cifar10(&url, &md5_hex(&bytes).to_uppercase(), &dir.join("."), false).unwrap();
    assert_eq!(server.join().unwrap(), 1);
    assert_eq!(folder, dir.join(".").join(FOLDER_NAME));
    assert_eq!(entries(&dir), vec![FOLDER_NAME.to_string()]);
    for (name, content) in &files {
        assert_eq!(&std::fs::read(folder.join(name)).unwrap(), content, "{name}");
    }
    let training = cifar::load_training_set(&folder).unwrap();
    assert_eq!(training.len(), 5 * RECORDS_PER_FILE);
    assert_eq!(training.labels, vec![0, 1, 1, 2, 2, 3, 3, 4, 4, 5]);
    assert_eq!(cifar::load_test_set(&folder).unwrap().labels, vec![5, 6]);

    // A second run finds the complete folder and neither downloads nor touches it: the URL now
    // points at a port where nothing listens.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let again = download_cifar10(&format!("http://{closed}/x.tar.gz"), "0", &dir, false).unwrap();
    assert_eq!(again, dir.join(FOLDER_NAME));
    assert_eq!(training, cifar::load_training_set(&again).unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn wrong_checksum_is_refused_and_leaves_nothing() {
    let bytes = archive(&complete_files());
    let error = expect_failure("checksum", Reply::Whole(bytes), None, &["{url}", "MD5"]);
    assert!(
        error.contains("expected 00000000000000000000000000000000"),
        "{error}"
    );
}

#[test]
fn cut_off_transfer_is_refused_and_leaves_nothing() {
    let bytes = archive(&complete_files());
    let md5 = md5_hex(&bytes);
    let sent = bytes.len() / 2;
    let error = expect_failure(
        "cut-off",
        Reply::CutOff { body: bytes, sent },
        Some(&md5),
        &["{url}", "cut off"],
    );
    assert!(error.contains(&format!("{sent} of")), "{error}");
}

#[test]
fn http_errors_are_refused_and_leave_nothing() {
    expect_failure("http-500", Reply::Status(500), None, &["{url}", "HTTP 500"]);
    expect_failure("http-404", Reply::Status(404), None, &["{url}", "HTTP 404"]);
}

#[test]
fn archive_with_bad_records_or_missing_files_is_refused_even_with_the_right_md5() {
    let mut files = complete_files();
    files[5].1[RECORDS_PER_FILE * cifar::RECORD_BYTES - cifar::RECORD_BYTES] = 10; // a label of 10
    let bytes = archive(&files);
    expect_failure(
        "bad-label",
        Reply::Whole(bytes.clone()),
        Some(&md5_hex(&bytes)),
        &["{url}: cifar-10-batches-bin/test_batch.bin: record 1", "label 10"],
    );

    let mut files = complete_files();
    files.retain(|(name, _)| name != "data_batch_3.bin");
    let bytes = archive(&files);
    expect_failure(
        "missing-batch",
        Reply::Whole(bytes.clone()),
        Some(&md5_hex(&bytes)),
        &["{url}: cifar-10-batches-bin/data_batch_3.bin", "no such"],
    );

    let mut files = complete_files();
    files[1].1.truncate(cifar::RECORD_BYTES); // one record where the others have two
    let bytes = archive(&files);
    expect_failure(
        "uneven",
        Reply::Whole(bytes.clone()),
        Some(&md5_hex(&bytes)),
        &["{url}: cifar-10-batches-bin/data_batch_2.bin", "holds 1 records"],
    );
}

#[test]
fn archive_entries_outside_the_folder_are_refused() {
    // An entry whose name climbs out of the folder (written into the raw header, since
    // tar::Builder itself refuses such names).
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut header = tar::Header::new_old();
    let name = b"cifar-10-batches-bin/../escaped.txt";
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_mode(0o644);
    header.set_size(3);
    header.set_cksum();
    builder.append(&header, &b"bad"[..]).unwrap();
    let bytes = builder.into_inner().unwrap().finish().unwrap();
    expect_failure(
        "escape",
        Reply::Whole(bytes.clone()),
        Some(&md5_hex(&bytes)),
        &["{url}: cifar-10-binary.tar.gz: unexpected entry", "escaped.txt"],
    );
}

#[test]
fn an_existing_incomplete_folder_is_reported_and_left_untouched() {
    let dir = fresh_dir("incomplete");
    let folder = dir.join(FOLDER_NAME);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("data_batch_1.bin"), batch(1, 0)).unwrap();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let error = download_cifar10(&format!("http://{closed}/x.tar.gz"), "0", &dir, false)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("data_batch_2.bin") && error.contains("already exists"),
        "{error}"
    );
    assert_eq!(entries(&folder), vec!["data_batch_1.bin".to_string()]);
    assert_eq!(
        std::fs::read(folder.join("data_batch_1.bin")).unwrap(),
        batch(1, 0)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_download_command_reports_success_and_failure_in_one_line() {
    let dir = fresh_dir("command");
    let bytes = archive(&complete_files());
    // A data folder that does not exist yet: a failed run must not leave it behind either.
    let data = dir.join("data");
    let run = |url: &str, md5: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sbfnet"))
            .args(["download", "--quiet", "--dir"])
            .arg(&data)
            .args(["--url", url, "--md5", md5])
            .output()
            .unwrap()
    };
    let (url, server) = serve(Reply::Whole(bytes.clone()));
    let failed = run(&url, &"f".repeat(32));
    assert_eq!(server.join().unwrap(), 1);
    assert_eq!(failed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.starts_with(&format!("error: {url}: MD5")), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!data.exists(), "the failed run left {}", data.display());

    let (url, server) = serve(Reply::Whole(bytes.clone()));
    let done = run(&url, &md5_hex(&bytes));
    assert_eq!(server.join().unwrap(), 1);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(
        stdout.contains("CIFAR-10 is in") && stdout.contains("2 records per batch file"),
        "{stdout}"
    );
    let again = run("http://127.0.0.1:9/unused", "0");
    assert!(String::from_utf8_lossy(&again.stdout).contains("already in"));
    assert_eq!(entries(&data), vec![FOLDER_NAME.to_string()]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn two_concurrent_downloads_into_one_folder_both_succeed_and_leave_one_copy() {
    let dir = fresh_dir("concurrent");
    let bytes = archive(&complete_files());
    let md5 = md5_hex(&bytes);
    let downloads: Vec<_> = (0..2)
        .map(|_| {
            let (url, server) = serve(Reply::Whole(bytes.clone()));
            let (dir, md5) = (dir.clone(), md5.clone());
            (
                std::thread::spawn(move || download_cifar10(&url, &md5, &dir, false)),
                server,
            )
        })
        .collect();
    for (download, server) in downloads {
        assert_eq!(download.join().unwrap().unwrap(), dir.join(FOLDER_NAME));
        // A run that found the other's finished copy never connects: its server stops by itself.
        assert!(server.join().unwrap() <= 1);
    }
    assert_eq!(entries(&dir), vec![FOLDER_NAME.to_string()]);
    assert_eq!(
        cifar::load_test_set(&dir.join(FOLDER_NAME)).unwrap().labels,
        vec![5, 6]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
