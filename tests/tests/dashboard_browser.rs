//! The dashboard in a real browser: headless Chromium driven through
//! chromedriver (WebDriver, with fantoccini) against real `vend-replica`
//! processes. The operator logs in through the form, sees the fleet
//! overview go live (entries the fleet commits appear in the page's live
//! feed over Server-Sent Events), opens a machine's page by its link; then
//! the primary is killed with SIGKILL and a follower's dashboard still
//! serves the overview and the machine page to the same browser session
//! (session cookies are checked by every replica and ignore the port).
//!
//! Needs `chromium` and `chromedriver` (Debian: `apt-get install chromium
//! chromium-driver`; scripts/test.sh installs them). Without them the test
//! says SKIP and passes: it installs nothing itself.

mod common;

use common::web::user_add;
use common::{Cluster, base_port, finish_fleet, init_cluster, primaries, start_fleet};
use fantoccini::{Client, ClientBuilder, Locator};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN: (&str, &str) = ("kim", "admin-pass-1!");
/// How long the browser waits for something to appear on a page.
const PATIENCE: Duration = Duration::from_secs(20);

/// A program on PATH (or in /usr/bin), by any of its names.
fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.push(PathBuf::from("/usr/bin"));
    names
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// chromedriver on a free port; killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start(program: &Path) -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(program)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status_address(base: u16, index: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], base + 21 + u16::try_from(index).unwrap()))
}

async fn browser(driver: &Driver, chromium: &Path) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            "args": ["--headless", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,1000"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("chromedriver opens a browser session")
}

/// The text of the first element matching `css`, once there. Live
/// updates replace parts of the page, so an element found a moment ago may
/// be gone when its text is read: it is then looked up again.
async fn text_of(client: &Client, css: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let element = client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css} never appeared: {e}"));
        match element.text().await {
            Ok(text) => return text,
            Err(error) => {
                assert!(Instant::now() < deadline, "{css}: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Waits until the first element matching `css` has text satisfying `ok`.
async fn wait_for_text(client: &Client, css: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let text = text_of(client, css).await;
        if ok(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{css} still says {text:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Logs in through the form, retrying while the account is on its way
/// into the replica's projection; lands on the overview.
async fn log_in(client: &Client, base: &str) {
    let deadline = Instant::now() + PATIENCE;
    let mut first = true;
    loop {
        client.goto(&format!("{base}/")).await.unwrap();
        let url = client.current_url().await.unwrap();
        if !first && url.path() == "/" {
            // The last attempt did log in; its page was read before the
            // browser had followed the redirect.
            wait_for_text(client, "h1", |h1| h1 == "Fleet overview").await;
            return;
        }
        first = false;
        assert_eq!(
            url.path(),
            "/login",
            "a page without a session sends to the login form"
        );
        client
            .find(Locator::Css("#user"))
            .await
            .unwrap()
            .send_keys(ADMIN.0)
            .await
            .unwrap();
        client
            .find(Locator::Css("#password"))
            .await
            .unwrap()
            .send_keys(ADMIN.1)
            .await
            .unwrap();
        client
            .find(Locator::Css("form.login button[type=submit]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let h1 = text_of(client, "h1").await;
        if h1 == "Fleet overview" {
            return;
        }
        assert!(Instant::now() < deadline, "logging in still ends on {h1:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[test]
fn a_browser_logs_in_goes_live_and_a_follower_serves_it_after_the_primary_dies() {
    let (Some(chromedriver), Some(chromium)) = (
        find_program(&["chromedriver"]),
        find_program(&["chromium", "chromium-browser"]),
    ) else {
        eprintln!(
            "SKIP dashboard_browser: chromium and chromedriver are not installed \
             (apt-get install chromium chromium-driver; scripts/test.sh does)"
        );
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let base = base_port();
    let mut cluster = Cluster::start(dir, init_cluster(dir, base));
    let status = cluster.wait_for("a primary", Duration::from_secs(20), |s| {
        primaries(s).len() == 1
    });
    let primary_index = primaries(&status)[0].0;
    let primary = format!("http://{}", status_address(base, primary_index));
    let follower_index = (primary_index + 1) % 3;
    let follower = format!("http://{}", status_address(base, follower_index));
    user_add(dir, ADMIN.0, "admin", ADMIN.1);

    let driver = Driver::start(&chromedriver);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = browser(&driver, &chromium).await;
        log_in(&client, &primary).await;
        wait_for_text(&client, "#live-status", |t| t == "live").await;

        // Entries the fleet commits reach the page over SSE.
        let fleet = start_fleet(dir, 2, 60, 60);
        client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css("#live-feed li"))
            .await
            .expect("a committed entry appears in the live feed");
        finish_fleet(fleet, 2 * 60);

        // The overview lists the machines (its projection is republished
        // at most every 500 ms: reload until it has both); a machine's
        // link opens its page.
        let deadline = Instant::now() + PATIENCE;
        let link = loop {
            client.refresh().await.unwrap();
            let found = client
                .find(Locator::Css("a[href='/machines/VM-001']"))
                .await;
            let both = client
                .find(Locator::Css("a[href='/machines/VM-002']"))
                .await
                .is_ok();
            match found {
                Ok(link) if both => break link,
                _ => {
                    assert!(
                        Instant::now() < deadline,
                        "the overview never listed VM-001 and VM-002"
                    );
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        };
        link.click().await.unwrap();
        wait_for_text(&client, "h1", |t| t.starts_with("Machine VM-001")).await;
        assert!(text_of(&client, "body").await.contains("Slots"));

        // SIGKILL the primary: the follower's dashboard serves the same
        // session its pages, and says what it is.
        cluster.kill(primary_index);
        client.goto(&format!("{follower}/")).await.unwrap();
        wait_for_text(&client, "h1", |t| t == "Fleet overview").await;
        assert_eq!(client.current_url().await.unwrap().path(), "/");
        let header = text_of(&client, "header.top").await;
        assert!(header.contains("replica-"), "{header}");
        assert!(text_of(&client, "main").await.contains("VM-002"));
        client
            .goto(&format!("{follower}/machines/VM-001"))
            .await
            .unwrap();
        wait_for_text(&client, "h1", |t| t.starts_with("Machine VM-001")).await;
        client.close().await.unwrap();
    });
    drop(driver);
    cluster.stop_all();
}
