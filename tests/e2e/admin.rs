//! The admin listener: bearer token, metrics that count real traffic, user lookup, input
//! errors with reasons, and drain over HTTP.

use std::time::Duration;

use weir_tests::{curl, on_every_driver, DataDir, Driver, Metrics, ALICE};

const TOKEN: &str = "admin-secret-for-tests";

fn admin_api(driver: Driver) {
    let data = DataDir::new();
    data.alice_with_item("song", 50_000, 1);
    let admin_flags = ["--admin-listen", "127.0.0.1:0", "--admin-token", TOKEN];
    let mut srv = data.serve(driver, &admin_flags);
    let admin = srv.admin_url();
    let bearer = format!("Authorization: Bearer {TOKEN}");

    // Traffic the metrics must show: one 200 of 50,000 bytes, one 401.
    assert_eq!(curl(&srv.url("/d/song"), &["-u", ALICE]).status, 200);
    assert_eq!(curl(&srv.url("/d/song"), &[]).status, 401);

    let m = Metrics::fetch(&admin, TOKEN);
    assert_eq!(m.value("weir_responses_total{class=\"2xx\"}"), 1);
    assert_eq!(m.value("weir_responses_total{class=\"4xx\"}"), 1);
    assert!(m.value("weir_bytes_sent_total") > 50_000);

    // Token checks.
    assert_eq!(curl(&format!("{admin}/metrics"), &[]).status, 401);
    let r = curl(
        &format!("{admin}/metrics"),
        &["-H", "Authorization: Bearer wrong"],
    );
    assert_eq!(r.status, 401);

    // Users: known, unknown; malformed bodies and rates get 400 with a reason.
    let r = curl(&format!("{admin}/users/alice"), &["-H", &bearer]);
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("\"name\":\"alice\""));
    assert_eq!(
        curl(&format!("{admin}/users/nobody"), &["-H", &bearer]).status,
        404
    );
    let put = |path: &str, body: &str| {
        curl(
            &format!("{admin}{path}"),
            &["-H", &bearer, "-X", "PUT", "-d", body],
        )
    };
    let r = put("/users/alice/rate", "not json");
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("not JSON"));
    let r = put("/users/alice/rate", "{\"rate\":\"fast\"}");
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("no number"));

    // Drain over HTTP: answered, then the server exits 0.
    let r = curl(&format!("{admin}/drain"), &["-H", &bearer, "-X", "POST"]);
    assert_eq!(r.status, 202);
    let st = srv
        .wait_timeout(Duration::from_secs(15))
        .expect("no exit after POST /drain");
    assert!(st.success());
}

on_every_driver!(admin_api);
