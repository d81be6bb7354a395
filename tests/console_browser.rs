//! The owner's console in a real browser (headless Chromium through
//! chromedriver): issue 14's "Tests in a real browser".

#[path = "common/attacker.rs"]
mod attacker;
#[path = "common/browser.rs"]
mod browser;
mod common;

use browser::Browser;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_reads_what_a_page_wrote() {
    let addr =
        attacker::serve("<!doctype html><p id=x>hello</p><script>document.body.dataset.done='1'</script>".into()).await;
    let b = Browser::start(1024, 900).await;
    b.goto(&format!("http://127.0.0.1:{}/", addr.port())).await;
    assert_eq!(b.text("#x").await, "hello");
    let w = b.js("return [window.innerWidth, document.documentElement.scrollWidth];", vec![]).await;
    println!("{w}");
}
