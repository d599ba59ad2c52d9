//! Guarded changes: after a configuration change goes live, the pools it touched are watched
//! for a window with the canary's triggers (error rate over `error_for`, healthy share over
//! `healthy_for`); a trigger makes the version before it current again, as a new version, with
//! the numbers in the audit log and the rollout's events. A guard is a rollout of its own kind,
//! so it persists, survives restarts and upgrades, and shows in `rollout list`.
use std::time::Duration;

use nrdot_config::Config;
use serde_json::{json, Value};

use super::{Analysis, Phase, Plan, Rollout, RolloutError, Rollouts};

/// The pools a change touched: those added or changed, and those a new or changed route
/// sends traffic to.
pub fn touched(old: &Config, new: &Config) -> Vec<String> {
    let mut out: Vec<String> = new
        .pools
        .iter()
        .filter(|p| old.pools.iter().find(|o| o.name == p.name) != Some(*p))
        .map(|p| p.name.clone())
        .collect();
    for r in &new.routes {
        if old.routes.iter().find(|o| o.name == r.name) != Some(r) {
            out.extend(
                r.split
                    .iter()
                    .filter(|e| e.weight > 0)
                    .map(|e| e.pool.clone()),
            );
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The canary's analysis with the `[guard]` thresholds (memory is the steady-state watch's).
pub fn analysis(g: &nrdot_config::Guard) -> Analysis {
    Analysis {
        max_error_rate: g.max_error_rate,
        error_for_ms: g.error_for.as_millis() as u64,
        min_healthy: g.min_healthy,
        healthy_for_ms: g.healthy_for.as_millis() as u64,
        // Never: a finite "no limit", because JSON has no infinity (it would be stored as null).
        max_memory: f64::MAX,
        memory_for_ms: u64::MAX,
        max_p99_ms: None,
        min_requests: g.min_requests,
    }
}

/// Checks a requested window against the thresholds before anything changes.
pub fn check_window(window: Duration, g: &nrdot_config::Guard) -> Result<(), RolloutError> {
    if window < g.error_for {
        return Err(RolloutError::Invalid(format!(
            "guard window {}s is shorter than the analysis window ({}s, [guard] error_for): it could never judge the change",
            window.as_secs(),
            g.error_for.as_secs()
        )));
    }
    Ok(())
}

impl Rollouts {
    /// Starts watching version `after` (which replaced `before`) on `pools` for `window`.
    pub fn guard(
        &self,
        before: u64,
        after: u64,
        pools: Vec<String>,
        window: Duration,
        settings: &nrdot_config::Guard,
        author: &str,
    ) -> Result<Rollout, RolloutError> {
        check_window(window, settings)?;
        let plan = Plan::Guard {
            before,
            after,
            pools,
            window_ms: window.as_millis() as u64,
            analysis: analysis(settings),
        };
        self.insert_new(plan, author, None)
    }

    /// One tick of a guard.
    pub(super) fn step_guard(
        &self,
        r: &mut Rollout,
        dt: u64,
        after: u64,
        pools: &[String],
        window_ms: u64,
        a: &Analysis,
    ) -> Result<(), RolloutError> {
        if !r.applied {
            let mut sampler = self.sampler.lock().expect("sampler poisoned");
            for p in pools {
                sampler.reset(p);
            }
            r.applied = true;
            r.step_elapsed_ms = 0;
            return Ok(());
        }
        let current = self.control.version().id;
        if current != after {
            r.phase = Phase::Completed;
            r.reason = format!("version {current} replaced version {after}; the guard ended");
            let why = r.reason.clone();
            self.record(r, "superseded", &why, json!({}));
            return Ok(());
        }
        r.step_elapsed_ms = r.step_elapsed_ms.saturating_add(dt);
        if let Some((why, numbers)) = self.guard_trigger(r, pools, a) {
            return self.revert(r, Phase::RolledBack, &why, numbers);
        }
        if r.step_elapsed_ms >= window_ms {
            r.phase = Phase::Completed;
            r.reason = format!("version {after} held for {}s", window_ms / 1000);
            let why = r.reason.clone();
            self.record(r, "completed", &why, json!({}));
        }
        Ok(())
    }

    /// A blue-green switch's guard window: the new pool is watched, a trigger switches back.
    pub(super) fn guard_switch(
        &self,
        r: &mut Rollout,
        dt: u64,
        to: &str,
        guard_ms: u64,
        analysis: Option<&Analysis>,
    ) -> Result<(), RolloutError> {
        let Some(a) = analysis else { return Ok(()) };
        if let Some((why, numbers)) = self.guard_trigger(r, &[to.to_string()], a) {
            return self.revert(r, Phase::RolledBack, &why, numbers);
        }
        // The keep window's clock runs on; the guard ends with its own window.
        r.step_elapsed_ms = r.step_elapsed_ms.saturating_add(dt);
        if r.step_elapsed_ms >= guard_ms {
            self.record(
                r,
                "guard_passed",
                &format!("{to} held for {}s", guard_ms / 1000),
                json!({}),
            );
        }
        Ok(())
    }

    /// Between batches of a rolling rollout (pausing, or about to start the next): whether the
    /// last batch raised the pool's error rate, in which case the rollout stops here and the
    /// remaining servers stay untouched.
    pub(super) fn batch_raised_errors(
        &self,
        r: &mut Rollout,
        pool: &str,
        analysis: Option<&Analysis>,
    ) -> bool {
        let between = r.step > 0 && matches!(r.stage, None | Some(super::Stage::Pause));
        let Some(a) = analysis.filter(|_| between) else {
            return false;
        };
        let Some((why, numbers)) = self.guard_trigger(r, &[pool.to_string()], a) else {
            return false;
        };
        r.phase = Phase::Failed;
        r.reason = format!(
            "batch {} raised the error rate, {why}; the remaining servers are untouched",
            r.step
        );
        let reason = r.reason.clone();
        self.record(r, "failed", &reason, numbers);
        true
    }

    /// The first trigger that fires on any watched pool, with its numbers.
    fn guard_trigger(
        &self,
        r: &mut Rollout,
        pools: &[String],
        a: &Analysis,
    ) -> Option<(String, Value)> {
        let table = self.control.current();
        let measured: Vec<(String, super::Measured)> = {
            let sampler = self.sampler.lock().expect("sampler poisoned");
            pools
                .iter()
                .map(|p| (p.clone(), sampler.measure(&table, p, a)))
                .collect()
        };
        let worst_health = measured
            .iter()
            .min_by(|x, y| x.1.healthy_fraction.total_cmp(&y.1.healthy_fraction))
            .cloned();
        for (pool, m) in &measured {
            if a.errors_exceeded(m) {
                r.measured = Some(m.clone());
                let why = format!(
                    "pool {pool}: error rate {:.1}% > {:.1}% over the last {}s ({} of {} requests)",
                    m.error_rate * 100.0,
                    a.max_error_rate * 100.0,
                    a.error_for_ms / 1000,
                    m.window_errors,
                    m.window_requests
                );
                return Some((why, serde_json::to_value(m).unwrap_or(Value::Null)));
            }
        }
        let (pool, m) = worst_health?;
        let mut inner = self.inner.lock().expect("rollouts poisoned");
        let bad = m.healthy_fraction < a.min_healthy;
        let fired =
            super::analysis::held(&mut inner.since, (r.id, "healthy"), bad, a.healthy_for_ms);
        drop(inner);
        fired.then(|| {
            r.measured = Some(m.clone());
            (
                format!(
                    "pool {pool}: healthy backends {:.0}% < {:.0}% for {}s",
                    m.healthy_fraction * 100.0,
                    a.min_healthy * 100.0,
                    a.healthy_for_ms / 1000
                ),
                serde_json::to_value(&m).unwrap_or(Value::Null),
            )
        })
    }
}

/// What the steady-state watch remembers between ticks: which triggers fire, and since when
/// each held condition has held.
#[derive(Default)]
pub struct Watch {
    firing: std::collections::HashMap<(String, &'static str), bool>,
    since: std::collections::HashMap<(String, &'static str), std::time::Instant>,
    last: Option<std::time::Instant>,
}

impl Watch {
    fn held(&mut self, key: (String, &'static str), cond: bool, for_ms: u64) -> bool {
        super::analysis::held(&mut self.since, key, cond, for_ms)
    }
}

impl Rollouts {
    /// The playbook's triggers outside any rollout, once a second: every pool's error rate and
    /// healthy share, and the process's memory, with the `[guard]` thresholds (memory: 90 %
    /// for 10 minutes). They act on nothing; they raise `trigger.firing` / `trigger.resolved`
    /// events and set `nrdot_trigger_firing{trigger, pool}`.
    pub(super) fn watch_steady(&self, w: &mut Watch) {
        if w.last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        w.last = Some(std::time::Instant::now());
        let table = self.control.current();
        let a = analysis(&table.config.guard);
        let measured: Vec<(String, super::Measured)> = {
            let sampler = self.sampler.lock().expect("sampler poisoned");
            table
                .pools
                .iter()
                .map(|p| {
                    (
                        p.config.name.clone(),
                        sampler.measure(&table, &p.config.name, &a),
                    )
                })
                .collect()
        };
        for (pool, m) in &measured {
            let errors = a.errors_exceeded(m);
            let detail = format!(
                "error rate {:.1}% over {}s ({} of {} requests)",
                m.error_rate * 100.0,
                a.error_for_ms / 1000,
                m.window_errors,
                m.window_requests
            );
            self.set_trigger(w, pool, "error_rate", errors, &detail);
            let unhealthy = w.held(
                (pool.clone(), "healthy"),
                m.healthy_fraction < a.min_healthy,
                a.healthy_for_ms,
            );
            let detail = format!("{:.0}% of backends healthy", m.healthy_fraction * 100.0);
            self.set_trigger(w, pool, "healthy_backends", unhealthy, &detail);
        }
        let memory = super::memory_fraction();
        let high = w.held((String::new(), "memory"), memory > 0.9, 10 * 60_000);
        let detail = format!("memory {:.1}% of the limit", memory * 100.0);
        self.set_trigger(w, "", "memory", high, &detail);
    }

    fn set_trigger(
        &self,
        w: &mut Watch,
        pool: &str,
        trigger: &'static str,
        firing: bool,
        detail: &str,
    ) {
        metrics::gauge!("nrdot_trigger_firing", "trigger" => trigger, "pool" => pool.to_string())
            .set(if firing { 1.0 } else { 0.0 });
        let was = w
            .firing
            .insert((pool.to_string(), trigger), firing)
            .unwrap_or(false);
        if was != firing {
            let target = if pool.is_empty() {
                trigger.to_string()
            } else {
                format!("pool {pool}")
            };
            let kind = if firing {
                "trigger.firing"
            } else {
                "trigger.resolved"
            };
            self.control
                .event(kind, &target, &format!("{trigger}: {detail}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(route_pool: &str, extra: &str) -> Config {
        Config::from_toml(&format!(
            "[[listener]]\nname = \"h\"\nbind = \"127.0.0.1:0\"\n[[pool]]\nname = \"a\"\n[[pool.server]]\naddress = \"127.0.0.1:1\"\n[[pool]]\nname = \"b\"\n[[pool.server]]\naddress = \"127.0.0.1:2\"\n{extra}[[route]]\nname = \"r\"\npool = \"{route_pool}\"\n"
        ))
        .expect("valid")
    }

    #[test]
    fn a_change_touches_the_pools_it_edits_and_the_ones_its_routes_now_use() {
        let old = config("a", "");
        assert!(touched(&old, &old).is_empty());
        assert_eq!(touched(&old, &config("b", "")), ["b"]);
        let with_c = config(
            "a",
            "[[pool]]\nname = \"c\"\n[[pool.server]]\naddress = \"127.0.0.1:3\"\n",
        );
        assert_eq!(touched(&old, &with_c), ["c"]);
    }

    #[test]
    fn a_window_shorter_than_the_analysis_is_refused() {
        let g = nrdot_config::Guard::default();
        assert!(check_window(Duration::from_secs(60), &g).is_err());
        assert!(check_window(Duration::from_secs(300), &g).is_ok());
    }
}
