mod common;
#[path = "common/attacker.rs"]
mod attacker;
#[path = "common/browser.rs"]
mod browser;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch() {
    let target = attacker::serve("<p>console stand-in</p>".into()).await;
    let evil = attacker::serve(attacker::page(target.port(), "t-123")).await;
    let b = browser::Browser::start(1024, 900).await;
    let t0 = std::time::Instant::now();
    b.goto(&format!("http://127.0.0.1:{}/", evil.port())).await;
    b.wait_js("return document.body.dataset.done === '1';", "done", |v| v == &serde_json::json!(true)).await;
    println!("took {:?}", t0.elapsed());
    let report = b.text("#report").await;
    let v: Vec<serde_json::Value> = serde_json::from_str(&report).unwrap();
    for r in &v { println!("{r}"); }
    println!("{}", v.len());
}
