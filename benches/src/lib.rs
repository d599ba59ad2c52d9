//! Shared fixtures for the benchmarks: a large, realistic configuration.

/// A configuration with `hosts * paths` routes (exact hosts, each with `paths` prefixes, plus a
/// wildcard per host and a catch-all), over 10 pools with a 90/10 split on every route.
pub fn large_config(hosts: usize, paths: usize) -> String {
    let mut t = String::from("[[listener]]\nname = \"http\"\nbind = \"127.0.0.1:8000\"\n");
    for p in 0..10 {
        t.push_str(&format!(
            "[[pool]]\nname = \"pool{p}\"\n[[pool.server]]\naddress = \"10.0.{p}.1:8080\"\n[[pool.server]]\naddress = \"10.0.{p}.2:8080\"\n"
        ));
    }
    for h in 0..hosts {
        for p in 0..paths {
            t.push_str(&format!(
                "[[route]]\nname = \"r{h}-{p}\"\nhost = \"svc{h}.example.com\"\npath = \"/api/v{p}/\"\nsplit = [{{ pool = \"pool{}\", weight = 90 }}, {{ pool = \"pool{}\", weight = 10 }}]\n",
                h % 10,
                (h + 1) % 10
            ));
        }
        t.push_str(&format!(
            "[[route]]\nname = \"w{h}\"\nhost = \"*.svc{h}.example.com\"\npool = \"pool{}\"\n",
            h % 10
        ));
    }
    t.push_str("[[route]]\nname = \"default\"\npool = \"pool0\"\n");
    t
}

/// Hosts of the large configuration: `NRDOT_SCALE_HOSTS`, else 1,000 (10,000 routes).
pub fn scale_hosts() -> usize {
    std::env::var("NRDOT_SCALE_HOSTS")
        .ok()
        .and_then(|h| h.parse().ok())
        .unwrap_or(1000)
}
