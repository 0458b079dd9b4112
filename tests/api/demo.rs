//! The `demo` command's wiring, in real time: an accelerated charge starts and stops at its
//! target through the HTTP API.

use std::time::Duration;

use serde_json::json;
use solar_charging_backend::cli::{DemoArgs, FaultArg, FirmwareArg};
use solar_charging_backend::domain::session::StopReason;
use solar_charging_backend::run::start_demo;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_charges_to_the_target_and_stops_through_the_api() {
    let demo = start_demo(&DemoArgs {
        port: 0,
        host: "127.0.0.1".into(),
        speed: 900.0,
        soc: 50.0,
        firmware: FirmwareArg::Modern,
        data_dir: None,
        fault: FaultArg::None,
    })
    .await
    .expect("the demo starts");
    let base = format!("http://{}", demo.app.addr);
    let mut status = demo.app.engine.watch();
    // The simulated dongle reports on connect; wait for its SOC.
    tokio::time::timeout(
        Duration::from_secs(20),
        status.wait_for(|s| s.soc.is_some()),
    )
    .await
    .expect("the demo's dongle reports")
    .unwrap();

    let r: serde_json::Value = reqwest::Client::new()
        .post(format!("{base}/api/charging/enable"))
        .json(&json!({"target_soc": 55}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["is_charging"], true);

    // Real writes are spaced a second apart, and the physics runs 900x: about ten seconds.
    let ended = tokio::time::timeout(
        Duration::from_secs(60),
        status.wait_for(|s| s.session.is_none() && s.last_stop.is_some()),
    )
    .await
    .expect("the charge ends")
    .unwrap()
    .clone();
    assert_eq!(
        ended.last_stop.as_ref().map(|l| l.0),
        Some(StopReason::TargetReached)
    );
    let soc = ended.soc.unwrap().get();
    assert!((55..=57).contains(&soc), "stopped at {soc}");
    let st: serde_json::Value = reqwest::get(format!("{base}/api/charging/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["is_charging"], false);
    demo.app.shutdown().await;
    demo.sim.shutdown().await;
}
