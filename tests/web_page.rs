//! The local web page (`watch --ui`, `serve`), opened in a real headless
//! Chromium driven over the DevTools protocol: it loads, searches, opens a
//! photo, takes a correction and shows the counts change; hostile file names
//! stay text; 100,000 results arrive a page at a time.
//!
//! Set INSTRUMENT_DETECTOR_SCREENSHOTS=DIR to keep the screenshots (the
//! README's come from here).

use crate::common::browser::{Browser, find_chromium};
use crate::common::*;
use image::ImageFormat;
use std::path::PathBuf;

/// The browser, or `None` after saying loudly why not (which fails under CI).
fn browser(s: &Setup) -> Option<Browser> {
    let Some(chromium) = find_chromium() else {
        if std::env::var_os("INSTRUMENT_DETECTOR_NO_BROWSER").is_some() {
            skip_or_fail_in_ci("the web page test: chromium is not installed (INSTRUMENT_DETECTOR_NO_BROWSER set)");
            return None;
        }
        panic!("chromium is not installed; scripts/test.sh installs it (or set INSTRUMENT_DETECTOR_NO_BROWSER=1)");
    };
    Some(Browser::launch(&chromium, &s.tmp.path().join("chromium-profile")))
}

/// The address a daemon or `serve` logged its page at.
fn page_url(log: impl Fn() -> String) -> String {
    let mut url = String::new();
    wait_for(30, "the page to listen", || {
        url = log().lines().find_map(|l| l.split("page at ").nth(1).map(|u| u.trim().to_string())).unwrap_or_default();
        !url.is_empty()
    });
    url
}

fn screenshot_dir(s: &Setup) -> PathBuf {
    std::env::var_os("INSTRUMENT_DETECTOR_SCREENSHOTS").map(PathBuf::from).unwrap_or_else(|| s.tmp.path().to_path_buf())
}

const HOSTILE: &str = "<img src=x onerror=\"document.title='pwned'\">.png";

#[test]
fn the_page_searches_opens_a_photo_and_takes_a_correction() {
    let s = Setup::new();
    for (i, name) in ["r1.png", "r2.jpg", "holiday/r3.png"].iter().enumerate() {
        s.write_image(name, "red", ImageFormat::Png, i as u32);
    }
    s.write_image("b1.png", "blue", ImageFormat::Png, 7);
    s.write_image("holiday/b2.png", "blue", ImageFormat::Png, 8);
    s.write_image(HOSTILE, "green", ImageFormat::Png, 9);
    std::fs::write(s.dir.join("broken.jpg"), b"\xff\xd8\xff garbage").unwrap();
    let mut d = s.start(&["--ui", "127.0.0.1:0"]);
    let url = page_url(|| d.log());
    wait_for(30, "7 rows", || s.count("SELECT count(*) FROM files WHERE status IN ('ok','error')") == 7);
    let Some(mut b) = browser(&s) else { return };

    b.navigate(&url);
    b.wait_for(20, "every result shown", "document.body.dataset.ready === '1' && document.body.dataset.shown === '7'");
    b.wait_for(
        10,
        "the thumbnails to load",
        "[...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)",
    );
    assert_eq!(b.eval("document.getElementById('counts').textContent"), "6 photos, 1 errors, 0 corrected");
    // The hostile name is shown as text and ran nothing.
    assert_eq!(b.eval("document.querySelectorAll('img[src=\"x\"]').length"), 0);
    assert_ne!(b.eval("document.title"), "pwned");
    let names = b.eval("[...document.querySelectorAll('.card .name')].map(n => n.textContent)");
    assert!(names.as_array().unwrap().iter().any(|n| n == HOSTILE), "{names}");
    b.screenshot(&screenshot_dir(&s).join("page.png"));

    // Search: a label and a folder.
    b.eval("document.getElementById('label').value = 'blue'; document.getElementById('path').value = 'holiday/'; document.getElementById('search').requestSubmit()");
    b.wait_for(10, "one blue photo in holiday/", "document.body.dataset.shown === '1'");
    let shown = b.eval("document.querySelector('.card').dataset.path");
    assert_eq!(shown, s.dir.join("holiday/b2.png").display().to_string());
    // The group buttons: errors, then everything again.
    b.eval("[...document.querySelectorAll('#groups button')].find(x => x.textContent.startsWith('errors')).click()");
    b.wait_for(
        10,
        "the error group",
        "document.body.dataset.shown === '1' && document.querySelector('.card.err') !== null",
    );
    b.eval("document.getElementById('clear').click()");
    b.wait_for(10, "everything again", "document.body.dataset.shown === '7'");

    // Open a photo and correct it: a red photo is really green.
    let path = s.dir.join("r1.png").display().to_string();
    b.eval(&format!("[...document.querySelectorAll('.card')].find(c => c.dataset.path === {path:?}).click()"));
    b.wait_for(
        10,
        "the photo's preview",
        "document.getElementById('photo').open && document.getElementById('photo-img').naturalWidth > 0",
    );
    assert_eq!(b.eval("document.getElementById('photo-label').textContent"), "red");
    assert_eq!(b.eval("document.getElementById('photo-model').textContent.includes('backend tract')"), true);
    b.screenshot(&screenshot_dir(&s).join("photo.png"));
    b.eval("document.getElementById('fix-label').value = 'green'; document.getElementById('fix-save').click()");
    b.wait_for(10, "the correction saved", "document.getElementById('message').textContent === 'saved: green'");
    b.wait_for(
        10,
        "the counts to change",
        "document.getElementById('counts').textContent === '6 photos, 1 errors, 1 corrected'",
    );
    let chips = b.eval("[...document.querySelectorAll('#groups button')].map(x => x.textContent)");
    assert!(chips.as_array().unwrap().iter().any(|c| c == "green (2)"), "{chips}");
    // What the page did is in the database, for every command.
    let green = s.query(&["--label", "green"]);
    assert!(green.iter().any(|r| r["path"] == path.as_str() && r["corrected"] == true), "{green:?}");
    assert!(b.problems.is_empty(), "the page reported problems: {:#?}", b.problems);
    assert!(d.stop().success());
}

#[test]
fn the_server_refuses_other_hosts_cross_site_writes_and_remote_addresses_without_the_flag() {
    let s = Setup::new();
    s.write_image("r1.png", "red", ImageFormat::Png, 1);
    let mut d = s.start(&["--ui", "127.0.0.1:0"]);
    let url = page_url(|| d.log());
    wait_for(30, "1 row", || s.count("SELECT count(*) FROM files WHERE status = 'ok'") == 1);
    let addr = url.trim_start_matches("http://").trim_end_matches('/').to_string();
    let ask = |request: String| -> String {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
        // A request the server misreads must fail the test, not hang it.
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        tcp.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).unwrap();
        answer
    };
    let body = format!("{{\"path\":{:?},\"label\":\"blue\"}}", s.dir.join("r1.png").display().to_string());
    let post = |host: &str, extra: &str| {
        format!(
            "POST /api/corrections HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let rebound = ask("GET /api/counts HTTP/1.1\r\nHost: attacker.example:80\r\nConnection: close\r\n\r\n".into());
    assert!(rebound.starts_with("HTTP/1.1 403"), "{rebound}");
    let form = ask(post(&addr, "Content-Type: text/plain\r\n"));
    assert!(form.starts_with("HTTP/1.1 403"), "a cross-site form post: {form}");
    let other_origin = ask(post(&addr, "Content-Type: application/json\r\nOrigin: http://attacker.example\r\n"));
    assert!(other_origin.starts_with("HTTP/1.1 403"), "{other_origin}");
    assert_eq!(s.count("SELECT count(*) FROM corrections"), 0);
    let ours = ask(post(&addr, &format!("Content-Type: application/json\r\nOrigin: http://{addr}\r\n")));
    assert!(ours.starts_with("HTTP/1.1 200"), "{ours}");
    assert_eq!(s.count("SELECT count(*) FROM corrections"), 1);
    let nowhere = r#"{"path":"/nowhere.jpg","label":"red"}"#;
    let unknown = ask(format!(
        "POST /api/corrections HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{nowhere}",
        nowhere.len()
    ));
    assert!(unknown.starts_with("HTTP/1.1 404") && unknown.contains("not in the database"), "{unknown}");
    assert!(d.stop().success());

    let remote = s.cmd(&["serve", "--addr", "0.0.0.0:0", "--db"]).arg(&s.db).output().unwrap();
    let err = String::from_utf8_lossy(&remote.stderr);
    assert!(
        !remote.status.success() && err.contains("not a loopback address") && err.contains("--allow-remote"),
        "{err}"
    );
}

#[test]
fn a_hundred_thousand_results_arrive_a_page_at_a_time() {
    let s = Setup::new();
    // The rows are written directly: classifying 100,000 photos is the
    // library benchmark's job, not this test's.
    {
        use instrument_detector::store::{FileMeta, Outcome, PredictionRow, Scored, Store};
        let mut store = Store::open_rw(&s.db).unwrap();
        store
            .conn()
            .execute("INSERT INTO models (sha256, name, labels, metadata, first_used_at) VALUES ('m', 'm.onnx', '[\"red\"]', '{}', 'now')", [])
            .unwrap();
        let prediction = PredictionRow {
            content_hash: "00".repeat(32),
            model_sha256: "m".into(),
            top5: vec![Scored { label: "red".into(), confidence: 0.9 }],
            backend: "tract".into(),
            inference_ms: 1.0,
        };
        let files =
            (0..100_000).map(|i| FileMeta { path: format!("/lib/{:03}/{i:06}.jpg", i / 1000), size: 1, mtime_ns: 1 });
        store.commit(&[Outcome::Classified { prediction, files: files.collect() }]).unwrap();
    }
    let serve = s
        .cmd(&["serve", "--addr", "127.0.0.1:0", "--db"])
        .arg(&s.db)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut serve = KillOnDrop(serve);
    let stderr = serve.0.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let url = page_url(|| log.lock().unwrap().clone());
    let Some(mut b) = browser(&s) else { return };
    b.navigate(&url);
    b.wait_for(
        20,
        "the first page",
        "document.body.dataset.ready === '1' && Number(document.body.dataset.shown) >= 60",
    );
    assert_eq!(b.eval("document.getElementById('counts').textContent"), "100000 photos, 0 errors, 0 corrected");
    let first = b.eval("Number(document.body.dataset.shown)").as_u64().unwrap();
    assert!(first < 1_000, "the page loaded {first} results at once");
    // Scrolling to the end fetches the next page, after the last path shown.
    // Scrolled again at each look, as a person would: cards still being laid
    // out can move the end of the page after a single scroll.
    b.wait_for(
        20,
        "the next page",
        &format!("(window.scrollTo(0, document.body.scrollHeight), Number(document.body.dataset.shown) > {first})"),
    );
    let paths = b.eval("[...document.querySelectorAll('.card')].map(c => c.dataset.path)");
    let paths: Vec<&str> = paths.as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(paths, sorted, "pages follow one another without gaps or repeats");
    assert_eq!(paths[0], "/lib/000/000000.jpg");
    assert_eq!(paths.len(), paths.last().unwrap()[9..15].parse::<usize>().unwrap() + 1);
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_retrain_button_learns_the_corrections_and_the_page_shows_the_library_redone() {
    let s = Setup::new();
    let data = crate::retrain::dataset(s.tmp.path());
    crate::retrain::library_model(&s);
    for i in 0..4 {
        s.write_image(&format!("blue-{i}.png"), "blue", ImageFormat::Png, 10 + i);
    }
    let data_arg = data.display().to_string();
    // The toy head's weights are ~10, so it takes bigger steps than a real one.
    let mut d = s.start_on_library_model(&[
        "--ui",
        "127.0.0.1:0",
        "--train-data",
        &data_arg,
        "--retrain-learning-rate",
        "0.05",
        "--backend",
        "tract",
    ]);
    let url = page_url(|| d.log());
    wait_for(30, "4 rows", || s.count("SELECT count(*) FROM files WHERE status = 'ok'") == 4);
    let Some(mut b) = browser(&s) else { return };
    b.navigate(&url);
    b.wait_for(20, "every result shown", "document.body.dataset.ready === '1' && document.body.dataset.shown === '4'");
    let labels = "[...document.querySelectorAll('.card')].map(c => c.dataset.path.split('/').pop() + '=' + c.querySelector('.lab').textContent).sort().join(' ')";
    assert_eq!(b.eval(labels), "blue-0.png=green blue-1.png=green blue-2.png=green blue-3.png=green");
    assert_eq!(b.eval("document.getElementById('retrain').disabled"), false);

    // Two corrections, made on the page.
    for i in 0..2 {
        let path = s.dir.join(format!("blue-{i}.png")).display().to_string();
        b.eval(&format!("[...document.querySelectorAll('.card')].find(c => c.dataset.path === {path:?}).click()"));
        b.wait_for(10, "the photo open", "document.getElementById('photo').open");
        b.eval("document.getElementById('fix-label').value = 'blue'; document.getElementById('fix-save').click()");
        b.wait_for(10, "the correction saved", "document.getElementById('message').textContent === 'saved: blue'");
        b.eval("document.getElementById('photo').close()");
        b.wait_for(10, "the grid again", "document.body.dataset.shown === '4'");
    }
    b.eval("document.getElementById('retrain').click()");
    b.wait_for(10, "the job to start", "document.body.dataset.retrain === 'running'");
    b.wait_for(120, "the job to end", "document.body.dataset.retrain !== 'running'");
    let status = b.eval("document.getElementById('retrain-status').textContent");
    assert_eq!(b.eval("document.body.dataset.retrain"), "done", "{status}");
    let status = status.as_str().unwrap();
    assert!(status.contains("retrained on 2 corrections") && status.contains("photos reclassified"), "{status}");
    // The photos no one corrected are blue now, on the page and in the database.
    b.wait_for(
        20,
        "the grid redone",
        &format!("{labels} === 'blue-0.png=blue blue-1.png=blue blue-2.png=blue blue-3.png=blue'"),
    );
    b.screenshot(&screenshot_dir(&s).join("retrained.png"));
    let rows = s.query(&["--label", "blue"]);
    let three = s.dir.join("blue-3.png").display().to_string();
    assert!(rows.iter().any(|r| r["path"] == three.as_str() && r["corrected"] == false), "{rows:?}");
    assert!(b.problems.is_empty(), "the page reported problems: {:#?}", b.problems);
    assert!(d.stop().success());
}
