//! The HTML report, opened in a real headless browser (Debian's chromium).

use crate::common::browser::{QUIET_HEADLESS, find_chromium};
use crate::common::*;
use image::ImageFormat;

#[test]
fn report_loads_in_a_browser_and_shows_the_groups() {
    let s = Setup::new();
    s.write_image("r1.png", "red", ImageFormat::Png, 1);
    s.write_image("r2.jpg", "red", ImageFormat::Jpeg, 2);
    s.write_image("b <script>alert(1)</script>.png", "blue", ImageFormat::Png, 3);
    std::fs::write(s.dir.join("broken.jpg"), b"\xff\xd8\xff garbage").unwrap();
    let mut d = s.start(&[]);
    wait_for(30, "4 rows", || s.count("SELECT count(*) FROM files WHERE status IN ('ok','error')") == 4);
    assert!(d.stop().success());

    let out_dir = s.tmp.path().join("report");
    let out = s.cmd(&["report", "--db"]).arg(&s.db).arg("--out").arg(&out_dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("3 new thumbnails"));
    // Thumbnails are made once.
    let again = s.cmd(&["report", "--db"]).arg(&s.db).arg("--out").arg(&out_dir).output().unwrap();
    assert!(String::from_utf8_lossy(&again.stderr).contains("0 new thumbnails"));
    let html = std::fs::read_to_string(out_dir.join("index.html")).unwrap();
    assert!(!html.contains("<script>alert(1)"), "file names must be escaped");

    let Some(browser) = find_chromium() else {
        if std::env::var_os("INSTRUMENT_DETECTOR_NO_BROWSER").is_some() {
            skip_or_fail_in_ci("the browser half: chromium is not installed (INSTRUMENT_DETECTOR_NO_BROWSER set)");
            return;
        }
        panic!("chromium is not installed; scripts/test.sh installs it (or set INSTRUMENT_DETECTOR_NO_BROWSER=1)");
    };
    let profile = s.tmp.path().join("chromium-profile");
    let out = std::process::Command::new(browser)
        .args(QUIET_HEADLESS)
        .args(["--enable-logging=stderr", "--v=0", "--virtual-time-budget=3000", "--dump-dom"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("file://{}", out_dir.join("index.html").display()))
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(dom.contains("data-groups=\"2\""), "the page script ran and counted 2 groups:\n{dom}");
    assert!(dom.contains("id=\"g-red\"") && dom.contains("id=\"g-blue\""));
    assert!(dom.contains("broken.jpg"), "errors are listed");
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
}
