//! Progressive delivery run by nrdot itself: canary with automatic analysis and rollback,
//! blue-green with a keep window, rolling upgrades with drain. The controller owns every
//! rollout's state machine and runs on the admin thread; every weight change is a config version
//! made through [`Control::apply`], every decision goes to the audit log and the rollout's event
//! list with the numbers it was based on, and every state change is persisted, so a restart
//! resumes a rollout at the same step with the same time left.
//!
//! Analysis reads the proxy's own per-pool totals ([`nrdot_config::state::Outcomes`]) sampled
//! once a second: no external metrics server.
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::audit::Event;
use crate::control::{AdminError, Control};
use crate::durable;

mod analysis;
pub mod guard;
pub mod request;
mod shared;
use analysis::Sampler;
pub use analysis::{memory_fraction, Analysis, Measured, Point};

use request::{DurationArg, PercentArg, RolloutCommand, StartRollout, StepArg, StepsArg, Triggers};

/// One pool's recent traffic.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, Deserialize)]
pub struct PoolStats {
    /// Pool name.
    pub pool: String,
    /// Oldest first.
    pub series: Vec<Point>,
}

/// What a rollout does.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Plan {
    /// Raise `to`'s share of `route` step by step, observing each step for `interval_ms`.
    Canary {
        /// Route whose split changes.
        route: String,
        /// The new version's pool.
        to: String,
        /// The stable pool (gets the rest).
        from: String,
        /// Canary weights in percent, e.g. 10, 50, 100.
        steps: Vec<u32>,
        /// Observation time per step without a time of its own.
        interval_ms: u64,
        /// Observation time of each step (`--steps 10:30m,50:1h,100`); empty or 0: the
        /// interval. Absent in rollouts persisted before per-step plans.
        #[serde(default)]
        durations_ms: Vec<u64>,
        /// Triggers.
        analysis: Analysis,
    },
    /// Switch `route` from `from` to `to` at once when `to` is healthy; keep `from` for
    /// `keep_old_ms`, then remove it.
    BlueGreen {
        /// Route to switch.
        route: String,
        /// The new pool.
        to: String,
        /// The old pool.
        from: String,
        /// Keep window.
        keep_old_ms: u64,
        /// Shell command that must exit 0 before traffic moves (the playbook's smoke and
        /// load tests); `{pool}` is replaced by the new pool's name.
        #[serde(default)]
        check: Option<String>,
        /// After the switch, watch the new pool this long; a trigger switches back.
        #[serde(default)]
        guard_ms: u64,
        /// The guard's triggers.
        #[serde(default)]
        analysis: Option<Analysis>,
    },
    /// Upgrade the servers of `pool` `batch` at a time: drain, run `hook`, wait for health,
    /// enable.
    Rolling {
        /// Pool to upgrade.
        pool: String,
        /// Servers per batch.
        batch: usize,
        /// Shell command; `{server}` is replaced by the server's address.
        hook: String,
        /// Longest wait for a drain, a hook, or a health check.
        wait_ms: u64,
        /// Pause after each batch but the last (the playbook's `sleep 300`).
        #[serde(default)]
        pause_ms: u64,
        /// Triggers judged on the pool between batches: a batch that raises the error rate
        /// stops the rollout.
        #[serde(default)]
        analysis: Option<Analysis>,
    },
    /// Watch the pools a configuration change touched; revert to `before` on a trigger.
    Guard {
        /// The version before the change, made current again on a trigger.
        before: u64,
        /// The guarded version.
        after: u64,
        /// Pools watched.
        pools: Vec<String>,
        /// How long.
        window_ms: u64,
        /// Triggers.
        analysis: Analysis,
    },
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Running.
    Progressing,
    /// Stopped by an operator; `resume` continues.
    Paused,
    /// Stopped by a trigger that needs a human; `approve` continues, `abort` ends it.
    AwaitingApproval,
    /// Done.
    Completed,
    /// Ended by analysis or `rollback`: traffic is back on the old side.
    RolledBack,
    /// Ended by `abort`: traffic is back on the old side (canary, blue-green).
    Aborted,
    /// A rolling step failed; the rollout stopped there.
    Failed,
}

impl Phase {
    /// The name the API uses (`awaiting_approval`).
    pub fn name(self) -> &'static str {
        match self {
            Phase::Progressing => "progressing",
            Phase::Paused => "paused",
            Phase::AwaitingApproval => "awaiting_approval",
            Phase::Completed => "completed",
            Phase::RolledBack => "rolled_back",
            Phase::Aborted => "aborted",
            Phase::Failed => "failed",
        }
    }

    fn active(self) -> bool {
        matches!(
            self,
            Phase::Progressing | Phase::Paused | Phase::AwaitingApproval
        )
    }

    fn code(self) -> f64 {
        match self {
            Phase::Progressing => 1.0,
            Phase::Paused => 2.0,
            Phase::AwaitingApproval => 3.0,
            Phase::Completed => 4.0,
            Phase::RolledBack => 5.0,
            Phase::Aborted => 6.0,
            Phase::Failed => 7.0,
        }
    }
}

/// Stage of the current batch of a rolling rollout.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Disabled; waiting for in-flight requests to finish.
    Drain,
    /// Running the hook.
    Hook,
    /// Waiting for the health check to pass.
    Health,
    /// The batch is done; pausing before the next one.
    Pause,
}

/// One thing that happened to a rollout.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, Deserialize)]
pub struct RolloutEvent {
    /// RFC 3339.
    pub time: String,
    /// `started`, `step`, `step_passed`, `rollback`, `paused`, …
    pub kind: String,
    /// Words.
    pub detail: String,
    /// The measurements behind the decision.
    pub numbers: Value,
}

/// A rollout and its progress.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, Deserialize)]
pub struct Rollout {
    /// Sequential id.
    pub id: u64,
    /// What it does.
    pub plan: Plan,
    /// Where it is.
    pub phase: Phase,
    /// Canary: index into steps; blue-green: 0 waiting, 1 switched; rolling: batch index.
    pub step: usize,
    /// Time spent in the current step (or stage), persisted so a restart keeps the time left.
    pub step_elapsed_ms: u64,
    /// Whether the current step's weights are in effect.
    pub applied: bool,
    /// Rolling: stage of the current batch.
    pub stage: Option<Stage>,
    /// Canary weight now (percent).
    pub weight: u32,
    /// Why it stopped or paused.
    pub reason: String,
    /// Who started it.
    pub author: String,
    /// When.
    pub created: String,
    /// Memory trigger acknowledged by `approve`: not raised again.
    pub memory_approved: bool,
    /// Latest analysis.
    pub measured: Option<Measured>,
    /// The region whose nodes it changes (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// History.
    pub events: Vec<RolloutEvent>,
}

/// Why a rollout command was refused.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// Bad parameters.
    #[error("{0}")]
    Invalid(String),
    /// No such rollout.
    #[error("no rollout {0}")]
    NotFound(u64),
    /// Not possible in the rollout's phase, or another rollout holds the route or pool.
    #[error("{0}")]
    Conflict(String),
    /// The config change behind the command failed.
    #[error(transparent)]
    Admin(#[from] AdminError),
}

struct Inner {
    rollouts: BTreeMap<u64, Rollout>,
    /// Since when each trigger's condition has held, per rollout (not persisted: a restart
    /// starts the "for" clocks again, which errs on the side of not acting on old data).
    since: HashMap<(u64, &'static str), Instant>,
    last_save: HashMap<u64, Instant>,
}

/// The controller.
pub struct Rollouts {
    control: Arc<Control>,
    dir: PathBuf,
    inner: Mutex<Inner>,
    sampler: Mutex<Sampler>,
    /// Results of rolling hooks, filled by their tasks: (rollout, batch) -> result.
    hooks: HookResults,
    /// Set during a binary upgrade: no step runs, so the new process resumes from the files.
    frozen: std::sync::atomic::AtomicBool,
    /// Held while a tick's steps run; [`Rollouts::freeze`] waits for it.
    stepping: tokio::sync::Mutex<()>,
    /// In a cluster: the records in etcd, the election, the other nodes' traffic.
    shared: Option<shared::Shared>,
}

type HookResults = Arc<Mutex<HashMap<(u64, usize), Option<Result<(), String>>>>>;

fn parse_percent(v: Option<&PercentArg>, default: f64) -> Result<f64, RolloutError> {
    match v {
        None => Ok(default),
        Some(PercentArg::Number(f)) => Ok(if *f > 1.0 { f / 100.0 } else { *f }),
        Some(PercentArg::Text(s)) => {
            let t = s.trim().trim_end_matches('%');
            let f: f64 = t
                .parse()
                .map_err(|_| RolloutError::Invalid(format!("bad percentage {s:?}")))?;
            Ok(f / 100.0)
        }
    }
}

/// A canary plan: `"10:30m,50:1h,100"`, or a list of such items or bare numbers. Each step
/// is a weight with an optional observation time (none: `--interval`). Weights must increase
/// and end at 100, so a plan always finishes with the new version serving everything.
pub fn parse_steps(v: Option<&StepsArg>) -> Result<(Vec<u32>, Vec<u64>), RolloutError> {
    let items: Vec<String> = match v {
        None => vec!["10".into(), "50".into(), "100".into()],
        Some(StepsArg::Text(t)) => t.split(',').map(|x| x.trim().to_string()).collect(),
        Some(StepsArg::List(a)) => a
            .iter()
            .map(|x| match x {
                StepArg::Text(t) => t.trim().to_string(),
                StepArg::Weight(w) => w.to_string(),
            })
            .collect(),
    };
    let bad = || {
        RolloutError::Invalid(
            "steps must be increasing percentages ending at 100, each with an optional time: 10:30m,50:1h,100"
                .into(),
        )
    };
    let (mut steps, mut durations) = (Vec::new(), Vec::new());
    for item in &items {
        let (w, d) = item.split_once(':').unwrap_or((item, ""));
        let w: u32 = w.trim().trim_end_matches('%').parse().map_err(|_| bad())?;
        let d = if d.trim().is_empty() {
            0
        } else {
            nrdot_config::units::parse_duration(d.trim())
                .map_err(|e| RolloutError::Invalid(format!("step {item:?}: {e}")))?
                .as_millis() as u64
        };
        steps.push(w);
        durations.push(d);
    }
    if steps.is_empty() || steps.last() != Some(&100) || steps.windows(2).any(|w| w[0] >= w[1]) {
        return Err(bad());
    }
    Ok((steps, durations))
}

/// The triggers of a canary or a guarded switch, from the request (the playbook's defaults).
fn parse_analysis(t: &Triggers) -> Result<Analysis, RolloutError> {
    Ok(Analysis {
        max_error_rate: parse_percent(t.max_error_rate.as_ref(), 0.05)?,
        error_for_ms: parse_ms(t.error_for.as_ref(), 5 * 60_000)?,
        min_healthy: parse_percent(t.min_healthy.as_ref(), 0.5)?,
        healthy_for_ms: parse_ms(t.healthy_for.as_ref(), 2 * 60_000)?,
        max_memory: parse_percent(t.memory_threshold.as_ref(), 0.9)?,
        memory_for_ms: parse_ms(t.memory_for.as_ref(), 10 * 60_000)?,
        max_p99_ms: match &t.max_p99 {
            None => None,
            Some(v) => Some(parse_ms(Some(v), 0)?),
        },
        min_requests: t.min_requests.unwrap_or(20),
    })
}

/// A blue-green switch's guard: its window and triggers, checked against the keep window.
fn parse_bg_guard(
    guard: Option<&DurationArg>,
    triggers: &Triggers,
    keep_old_ms: u64,
) -> Result<(u64, Option<Analysis>), RolloutError> {
    let guard_ms = parse_ms(guard, 0)?;
    if guard_ms == 0 {
        return Ok((0, None));
    }
    let a = parse_analysis(triggers)?;
    if guard_ms < a.error_for_ms {
        return Err(RolloutError::Invalid(format!(
            "guard window {}s is shorter than the analysis window (error_for {}s)",
            guard_ms / 1000,
            a.error_for_ms / 1000
        )));
    }
    if guard_ms > keep_old_ms {
        return Err(RolloutError::Invalid(
            "guard window is longer than the keep window: the old pool must still be there to switch back to".into(),
        ));
    }
    Ok((guard_ms, Some(a)))
}

/// Refuses a check command whose program cannot be found, before anything starts.
fn runnable(cmd: &str) -> Result<String, RolloutError> {
    let program = cmd.split_whitespace().next().unwrap_or("");
    let found = !program.is_empty()
        && std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "command -v -- '{}' >/dev/null",
                program.replace('\'', "")
            ))
            .status()
            .is_ok_and(|s| s.success());
    if found {
        Ok(cmd.to_string())
    } else {
        Err(RolloutError::Invalid(format!(
            "check {cmd:?} cannot be run: {program:?} is not a command here"
        )))
    }
}

/// The key under which a blue-green check's result is kept beside the rolling hooks'.
const CHECK: usize = usize::MAX;

/// How long step `i` is observed.
pub fn step_ms(durations_ms: &[u64], interval_ms: u64, i: usize) -> u64 {
    match durations_ms.get(i) {
        Some(&d) if d > 0 => d,
        _ => interval_ms,
    }
}

fn parse_ms(v: Option<&DurationArg>, default: u64) -> Result<u64, RolloutError> {
    match v {
        None => Ok(default),
        Some(DurationArg::Seconds(s)) => Ok(s.saturating_mul(1000)),
        Some(DurationArg::Text(s)) => nrdot_config::units::parse_duration(s)
            .map(|d| d.as_millis() as u64)
            .map_err(RolloutError::Invalid),
    }
}

impl Rollouts {
    /// Loads persisted rollouts from `state_dir/rollouts`.
    pub fn open(control: Arc<Control>, state_dir: &std::path::Path) -> std::io::Result<Rollouts> {
        let dir = state_dir.join("rollouts");
        durable::ensure_dir(&dir)?;
        let mut rollouts = BTreeMap::new();
        for e in std::fs::read_dir(&dir)?.flatten() {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Rollout>(&b).ok())
            {
                Some(r) => {
                    rollouts.insert(r.id, r);
                }
                None => tracing::error!(path = %path.display(), "damaged rollout file ignored"),
            }
        }
        let shared = control
            .cluster()
            .map(|(etcd, c)| shared::Shared::new(Arc::clone(etcd), &c.node));
        if let Some(sh) = &shared {
            // The cluster's records win over this node's files (which may be older).
            match sh.newer() {
                Ok(all) => rollouts.extend(all.into_iter().map(|r| (r.id, r))),
                Err(e) => tracing::warn!("rollouts from this node's files until etcd answers: {e}"),
            }
        }
        for r in rollouts.values() {
            if r.phase.active() {
                tracing::info!(
                    rollout = r.id,
                    step = r.step,
                    elapsed_ms = r.step_elapsed_ms,
                    "resuming rollout"
                );
            }
        }
        Ok(Rollouts {
            control,
            dir,
            inner: Mutex::new(Inner {
                rollouts,
                since: HashMap::new(),
                last_save: HashMap::new(),
            }),
            sampler: Mutex::new(Sampler::default()),
            hooks: Arc::new(Mutex::new(HashMap::new())),
            frozen: std::sync::atomic::AtomicBool::new(false),
            stepping: tokio::sync::Mutex::new(()),
            shared,
        })
    }

    /// Persists `r`: in its file, and in a cluster in etcd, where a record changed meanwhile
    /// by another node wins (a [`RolloutError::Conflict`]; the newer record is read next tick).
    fn save(&self, r: &Rollout) -> Result<(), RolloutError> {
        let path = self.dir.join(format!("{:08}.json", r.id));
        match serde_json::to_vec_pretty(r) {
            Ok(bytes) => {
                if let Err(e) = durable::write(&path, &bytes, 0o600) {
                    tracing::error!(error = %e, "cannot persist rollout {}", r.id);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode rollout {}", r.id),
        }
        match &self.shared {
            None => Ok(()),
            Some(sh) => match sh.save(r) {
                Ok(true) => Ok(()),
                Ok(false) => Err(RolloutError::Conflict(format!(
                    "rollout {} was changed on another node meanwhile; read it again",
                    r.id
                ))),
                Err(e) => Err(RolloutError::Admin(AdminError::from(e))),
            },
        }
    }

    /// Takes the cluster's newer records (commands made through other nodes, the leader's
    /// steps).
    fn merge(&self, newer: Vec<Rollout>) {
        if newer.is_empty() {
            return;
        }
        let mut inner = self.inner.lock().expect("rollouts poisoned");
        for r in newer {
            inner.rollouts.insert(r.id, r);
        }
    }

    /// Reads the cluster's newer records before answering about them (what the leader did
    /// since this node's last tick). Kept as they were when etcd does not answer.
    pub async fn catch_up(&self) {
        if let Some(sh) = &self.shared {
            if let Ok(newer) = sh.newer_async().await {
                self.merge(newer);
            }
        }
    }

    /// Reads the cluster's newer records before a command, so it acts on the latest.
    fn refresh(&self) -> Result<(), RolloutError> {
        if let Some(sh) = &self.shared {
            let newer = sh.newer().map_err(|e| RolloutError::Admin(e.into()))?;
            self.merge(newer);
        }
        Ok(())
    }

    /// Every pool's traffic over the last `span`, one point per `step`, for the dashboard.
    pub fn stats(&self, span: Duration, step: Duration) -> Vec<PoolStats> {
        let table = self.control.current();
        let sampler = self.sampler.lock().expect("sampler poisoned");
        table
            .pools
            .iter()
            .map(|p| PoolStats {
                pool: p.config.name.clone(),
                series: sampler.series(&p.config.name, span, step),
            })
            .collect()
    }

    /// Every rollout, newest last.
    pub fn list(&self) -> Vec<Rollout> {
        self.inner
            .lock()
            .expect("rollouts poisoned")
            .rollouts
            .values()
            .cloned()
            .collect()
    }

    /// One rollout.
    pub fn get(&self, id: u64) -> Option<Rollout> {
        self.inner
            .lock()
            .expect("rollouts poisoned")
            .rollouts
            .get(&id)
            .cloned()
    }

    /// Starts a rollout from an API request.
    pub fn create(&self, req: &StartRollout, author: &str) -> Result<Rollout, RolloutError> {
        let plan = match req {
            StartRollout::Canary {
                route,
                to,
                from,
                steps,
                interval,
                triggers,
                region: _,
            } => {
                let from = self.switch_sides(route, to, from.as_deref())?;
                let (steps, durations_ms) = parse_steps(steps.as_ref())?;
                Plan::Canary {
                    route: route.clone(),
                    to: to.clone(),
                    from,
                    steps,
                    durations_ms,
                    interval_ms: parse_ms(interval.as_ref(), 30 * 60_000)?,
                    analysis: parse_analysis(triggers)?,
                }
            }
            StartRollout::BlueGreen {
                route,
                to,
                from,
                keep_old,
                check,
                guard,
                triggers,
                region: _,
            } => {
                let from = self.switch_sides(route, to, from.as_deref())?;
                let keep_old_ms = parse_ms(keep_old.as_ref(), 24 * 3_600_000)?;
                let (guard_ms, analysis) = parse_bg_guard(guard.as_ref(), triggers, keep_old_ms)?;
                Plan::BlueGreen {
                    route: route.clone(),
                    to: to.clone(),
                    from,
                    keep_old_ms,
                    guard_ms,
                    analysis,
                    check: match check {
                        Some(cmd) => Some(runnable(cmd)?),
                        None => None,
                    },
                }
            }
            StartRollout::Rolling {
                pool,
                batch,
                hook,
                wait,
                pause,
                triggers,
            } => {
                if !self
                    .control
                    .current()
                    .config
                    .pools
                    .iter()
                    .any(|p| &p.name == pool)
                {
                    return Err(RolloutError::Invalid(format!("no pool {pool:?}")));
                }
                Plan::Rolling {
                    pool: pool.clone(),
                    batch: batch.unwrap_or(1).max(1) as usize,
                    hook: hook.clone(),
                    wait_ms: parse_ms(wait.as_ref(), 300_000)?,
                    pause_ms: parse_ms(pause.as_ref(), 0)?,
                    analysis: Some(parse_analysis(triggers)?),
                }
            }
        };
        let region = match req {
            StartRollout::Canary { region, .. } | StartRollout::BlueGreen { region, .. } => {
                self.scope(region.as_deref())?
            }
            StartRollout::Rolling { .. } => None,
        };
        self.insert_new(plan, author, region)
    }

    /// Checks a rollout's region: it needs a cluster, and a live node there (a mistyped
    /// region would change nothing anywhere).
    fn scope(&self, region: Option<&str>) -> Result<Option<String>, RolloutError> {
        let Some(region) = region else {
            return Ok(None);
        };
        let Some((etcd, _)) = self.control.cluster() else {
            return Err(RolloutError::Invalid(
                "a region-scoped rollout needs a cluster ([cluster] in the configuration)".into(),
            ));
        };
        let nodes = crate::cluster::nodes(etcd, 0).map_err(|e| RolloutError::Admin(e.into()))?;
        if !nodes.iter().any(|n| n.region == region) {
            let mut known: Vec<&str> = nodes.iter().map(|n| n.region.as_str()).collect();
            known.sort_unstable();
            known.dedup();
            return Err(RolloutError::Invalid(format!(
                "no live node in region {region:?} (regions: {})",
                known.join(", ")
            )));
        }
        Ok(Some(region.to_string()))
    }

    /// The old side of a switch of `route` to pool `to`: `from` when given, else the route's
    /// largest other pool. Checks that route and pools exist and differ.
    fn switch_sides(
        &self,
        route: &str,
        to: &str,
        from: Option<&str>,
    ) -> Result<String, RolloutError> {
        let table = self.control.current();
        let Some(r) = table.config.routes.iter().find(|r| r.name == route) else {
            return Err(RolloutError::Invalid(format!("no route {route:?}")));
        };
        if !table.config.pools.iter().any(|p| p.name == to) {
            return Err(RolloutError::Invalid(format!("no pool {to:?}")));
        }
        let from = match from {
            Some(f) => f.to_string(),
            None => r
                .split
                .iter()
                .filter(|e| e.pool != to)
                .max_by_key(|e| e.weight)
                .map(|e| e.pool.clone())
                .ok_or_else(|| {
                    RolloutError::Invalid(format!(
                        "route {route:?} has no pool besides {to:?}; give from"
                    ))
                })?,
        };
        if from == to {
            return Err(RolloutError::Invalid(
                "from and to are the same pool".into(),
            ));
        }
        Ok(from)
    }

    /// Registers a new rollout of `plan`, unless one is already running on its target.
    fn insert_new(
        &self,
        plan: Plan,
        author: &str,
        region: Option<String>,
    ) -> Result<Rollout, RolloutError> {
        self.refresh()?;
        let mut inner = self.inner.lock().expect("rollouts poisoned");
        let target = plan_target(&plan);
        // One rollout per target, except in different regions.
        if let Some(busy) = inner.rollouts.values().find(|r| {
            r.phase.active()
                && plan_target(&r.plan) == target
                && (r.region.is_none() || region.is_none() || r.region == region)
        }) {
            return Err(RolloutError::Conflict(format!(
                "rollout {} is already running on {target}",
                busy.id
            )));
        }
        let id = inner.rollouts.keys().last().copied().unwrap_or(0) + 1;
        let mut r = Rollout {
            id,
            plan,
            phase: Phase::Progressing,
            step: 0,
            step_elapsed_ms: 0,
            applied: false,
            stage: None,
            weight: 0,
            reason: String::new(),
            author: author.to_string(),
            created: crate::store::now_rfc3339(),
            memory_approved: false,
            measured: None,
            events: Vec::new(),
            region,
        };
        let scope = match &r.region {
            Some(region) => format!(" in region {region}"),
            None => String::new(),
        };
        let what = format!("{}{scope} by {author}", describe(&r.plan));
        self.record(&mut r, "started", &what, json!({}));
        self.save(&r)?;
        inner.rollouts.insert(id, r.clone());
        Ok(r)
    }

    /// Appends an event, and audits and logs it.
    fn record(&self, r: &mut Rollout, kind: &str, detail: &str, numbers: Value) {
        r.events.push(RolloutEvent {
            time: crate::store::now_rfc3339(),
            kind: kind.to_string(),
            detail: detail.to_string(),
            numbers: numbers.clone(),
        });
        let v = self.control.version().id;
        let _ = self.control.audit().record(Event {
            actor: format!("rollout {}", r.id),
            action: format!("rollout.{kind}"),
            target: plan_target(&r.plan),
            version_before: Some(v),
            version_after: Some(v),
            outcome: "ok".into(),
            detail: if numbers == json!({}) {
                detail.to_string()
            } else {
                format!("{detail} {numbers}")
            },
        });
        self.control.event(
            &format!("rollout.{kind}"),
            &format!("rollout {}", r.id),
            detail,
        );
    }

    /// An operator command: promote, pause, resume, abort, approve, rollback.
    pub fn command(
        &self,
        id: u64,
        command: RolloutCommand,
        actor: &str,
    ) -> Result<Rollout, RolloutError> {
        let verb = command.as_str();
        self.refresh()?;
        let mut inner = self.inner.lock().expect("rollouts poisoned");
        let mut r = inner
            .rollouts
            .get(&id)
            .cloned()
            .ok_or(RolloutError::NotFound(id))?;
        let conflict = |what: &str| {
            RolloutError::Conflict(format!("rollout {id} is {:?}: cannot {what}", r.phase))
        };
        match verb {
            "pause" if r.phase == Phase::Progressing => {
                r.phase = Phase::Paused;
                r.reason = format!("paused by {actor}");
                let why = r.reason.clone();
                self.record(&mut r, "paused", &why, json!({}));
            }
            "resume" if r.phase == Phase::Paused => {
                r.phase = Phase::Progressing;
                self.record(&mut r, "resumed", &format!("resumed by {actor}"), json!({}));
            }
            "approve" if r.phase == Phase::AwaitingApproval => {
                r.phase = Phase::Progressing;
                r.memory_approved = true;
                self.record(
                    &mut r,
                    "approved",
                    &format!("approved by {actor}; continuing"),
                    json!({}),
                );
            }
            "promote" if r.phase.active() => {
                match &r.plan {
                    Plan::Canary { .. } => {
                        // The step counts as passed now.
                        r.step_elapsed_ms = u64::MAX / 2;
                        r.phase = Phase::Progressing;
                        let what = format!("step {} promoted by {actor}", r.step + 1);
                        self.record(&mut r, "promoted", &what, json!({}));
                    }
                    Plan::BlueGreen { .. } => {
                        r.step_elapsed_ms = u64::MAX / 2;
                        r.phase = Phase::Progressing;
                        self.record(
                            &mut r,
                            "promoted",
                            &format!("promoted by {actor}"),
                            json!({}),
                        );
                    }
                    Plan::Rolling { .. } | Plan::Guard { .. } => {
                        return Err(RolloutError::Conflict(
                            "rolling rollouts and guards have no steps to promote".into(),
                        ))
                    }
                }
            }
            "abort" | "rollback"
                if r.phase.active() || (verb == "rollback" && r.phase == Phase::Completed) =>
            {
                let phase = if verb == "abort" {
                    Phase::Aborted
                } else {
                    Phase::RolledBack
                };
                let reason = format!("{verb} by {actor}");
                self.revert(&mut r, phase, &reason, json!({}))?;
            }
            other => return Err(conflict(other)),
        }
        self.save(&r)?;
        inner.rollouts.insert(id, r.clone());
        Ok(r)
    }

    /// Sends all traffic back to the old side and ends the rollout.
    fn revert(
        &self,
        r: &mut Rollout,
        phase: Phase,
        reason: &str,
        numbers: Value,
    ) -> Result<(), RolloutError> {
        match &r.plan {
            Plan::Canary {
                route, to, from, ..
            }
            | Plan::BlueGreen {
                route, to, from, ..
            } => {
                if let Plan::BlueGreen { .. } = &r.plan {
                    if r.step >= 2 {
                        return Err(RolloutError::Conflict(format!(
                            "rollout {}: the old pool was already removed after the keep window",
                            r.id
                        )));
                    }
                }
                let msg = format!(
                    "rollout {} {}: {reason}",
                    r.id,
                    if phase == Phase::RolledBack {
                        "rolled back"
                    } else {
                        "aborted"
                    }
                );
                let region = r.region.as_deref();
                self.set_split(route, region, &[(from.clone(), 100), (to.clone(), 0)], &msg)?;
                r.weight = 0;
            }
            Plan::Rolling { .. } => {}
            Plan::Guard { before, after, .. } => {
                if phase == Phase::RolledBack {
                    let msg =
                        format!("guard of version {after}: {reason}; back to version {before}");
                    self.control.rollback(*before, "guard", Some(&msg))?;
                }
            }
        }
        r.phase = phase;
        r.reason = reason.to_string();
        self.record(
            r,
            if phase == Phase::RolledBack {
                "rollback"
            } else {
                "aborted"
            },
            reason,
            numbers,
        );
        Ok(())
    }

    /// Sets `route`'s split everywhere, or only in `region`.
    fn set_split(
        &self,
        route: &str,
        region: Option<&str>,
        entries: &[(String, u32)],
        message: &str,
    ) -> Result<(), RolloutError> {
        self.edit_config(message, |text| match region {
            Some(region) => nrdot_config::edit::set_split_in_region(text, region, route, entries),
            None => nrdot_config::edit::set_split(text, route, entries),
        })
    }

    /// Applies an edit of the current configuration's text as a new version.
    fn edit_config(
        &self,
        message: &str,
        edit: impl FnOnce(&str) -> Result<String, nrdot_config::edit::EditError>,
    ) -> Result<(), RolloutError> {
        let current = self.control.version();
        let text = self
            .control
            .store()
            .get(current.id)
            .map_err(AdminError::from)?
            .content;
        let next = edit(&text).map_err(|e| RolloutError::Invalid(e.to_string()))?;
        self.control.apply(&next, "rollout", message, None)?;
        Ok(())
    }

    /// Stops stepping and persists every rollout as it stands (the elapsed time of the current
    /// step included), once any step in progress has finished: a binary upgrade's new process
    /// then resumes exactly there.
    pub async fn freeze(&self) {
        let _quiet = self.halt().await;
        let all: Vec<Rollout> = self.list();
        for r in all.iter().filter(|r| r.phase.active()) {
            if let Err(e) = self.save(r) {
                tracing::error!("rollout {}: {e}", r.id);
            }
        }
    }

    /// Stops stepping for good (the process is stopping); in a cluster another node takes
    /// over the rollouts at once.
    pub async fn stop(&self) {
        drop(self.halt().await);
    }

    /// Stops stepping once the step in progress is done and gives up leading; the guard
    /// keeps the controller quiet while held.
    async fn halt(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.frozen
            .store(true, std::sync::atomic::Ordering::Release);
        let quiet = self.stepping.lock().await;
        if let Some(sh) = &self.shared {
            sh.leader.resign().await;
        }
        quiet
    }

    /// Steps again (the upgrade failed and this process keeps serving).
    pub fn thaw(&self) {
        self.frozen
            .store(false, std::sync::atomic::Ordering::Release);
        if let Some(sh) = &self.shared {
            sh.leader.rejoin();
        }
    }

    /// Runs the controller until the runtime stops.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Instant::now();
        let mut watch = guard::Watch::default();
        if let Some(sh) = &self.shared {
            tokio::spawn(Arc::clone(&sh.leader).campaign());
        }
        let (mut others, mut ticks, mut led) = (HashMap::new(), 0u64, false);
        loop {
            tick.tick().await;
            let dt = last.elapsed().as_millis() as u64;
            last = Instant::now();
            let _stepping = self.stepping.lock().await;
            if self.frozen.load(std::sync::atomic::Ordering::Acquire) {
                continue;
            }
            ticks += 1;
            if let Some(sh) = &self.shared {
                // Every second, and at once on taking over: the records, and (leading) the
                // other nodes' traffic.
                let leading = sh.leader.leading();
                if ticks % 4 == 0 || leading != led {
                    if let Ok(newer) = sh.newer_async().await {
                        self.merge(newer);
                    }
                    if leading {
                        others = sh.others().await.unwrap_or(others);
                    }
                }
                if leading && !led {
                    self.control
                        .event("rollout.leader", "rollouts", "this node now runs rollouts");
                }
                led = leading;
            }
            self.sampler
                .lock()
                .expect("sampler poisoned")
                .sample(&self.control.current(), &others);
            if self.shared.as_ref().is_some_and(|sh| !sh.leader.leading()) {
                self.export_metrics();
                continue;
            }
            let ids: Vec<u64> = {
                let inner = self.inner.lock().expect("rollouts poisoned");
                inner
                    .rollouts
                    .values()
                    .filter(|r| r.phase == Phase::Progressing)
                    .map(|r| r.id)
                    .collect()
            };
            for id in ids {
                self.step(id, dt).await;
            }
            self.watch_steady(&mut watch);
            self.export_metrics();
        }
    }

    fn export_metrics(&self) {
        let inner = self.inner.lock().expect("rollouts poisoned");
        for r in inner
            .rollouts
            .values()
            .filter(|r| r.phase.active() || r.events.len() < 1000)
        {
            let labels = [
                ("rollout", r.id.to_string()),
                ("target", plan_target(&r.plan)),
            ];
            metrics::gauge!("nrdot_rollout_phase", &labels).set(r.phase.code());
            metrics::gauge!("nrdot_rollout_step", &labels).set(r.step as f64);
            metrics::gauge!("nrdot_rollout_weight_percent", &labels).set(r.weight as f64);
            if let Some(m) = &r.measured {
                metrics::gauge!("nrdot_rollout_error_rate", &labels).set(m.error_rate);
                metrics::gauge!("nrdot_rollout_healthy_fraction", &labels).set(m.healthy_fraction);
                metrics::gauge!("nrdot_rollout_p99_seconds", &labels).set(m.p99_ms as f64 / 1000.0);
            }
        }
    }

    async fn step(&self, id: u64, dt: u64) {
        let Some(mut r) = self.get(id) else { return };
        let before = (r.phase, r.step, r.applied, r.stage);
        let result = match r.plan.clone() {
            Plan::Canary {
                route,
                to,
                from,
                steps,
                interval_ms,
                durations_ms,
                analysis,
            } => {
                let observe_ms = step_ms(&durations_ms, interval_ms, r.step);
                self.step_canary(
                    &mut r, dt, &route, &to, &from, &steps, observe_ms, &analysis,
                )
            }
            Plan::BlueGreen {
                route,
                to,
                from,
                keep_old_ms,
                check,
                guard_ms,
                analysis,
            } => {
                if r.step == 0 && !self.checked(&mut r, &to, &from, check.as_deref()) {
                    Ok(())
                } else if r.step == 1 && r.step_elapsed_ms < guard_ms {
                    self.guard_switch(&mut r, dt, &to, guard_ms, analysis.as_ref())
                } else {
                    self.step_blue_green(&mut r, dt, &route, &to, &from, keep_old_ms)
                        .await
                }
            }
            Plan::Guard {
                after,
                pools,
                window_ms,
                analysis,
                ..
            } => self.step_guard(&mut r, dt, after, &pools, window_ms, &analysis),
            Plan::Rolling { pool, analysis, .. }
                if self.batch_raised_errors(&mut r, &pool, analysis.as_ref()) =>
            {
                Ok(())
            }
            Plan::Rolling {
                pool,
                batch,
                hook,
                wait_ms,
                pause_ms,
                ..
            } => {
                self.step_rolling(&mut r, dt, &pool, batch, &hook, (wait_ms, pause_ms))
                    .await
            }
        };
        if let Err(e) = result {
            r.phase = Phase::Failed;
            r.reason = e.to_string();
            self.record(&mut r, "failed", &e.to_string(), json!({}));
        }
        let mut inner = self.inner.lock().expect("rollouts poisoned");
        // An operator command may have changed the rollout meanwhile: theirs wins.
        if inner.rollouts.get(&id).map(|cur| cur.phase) != Some(Phase::Progressing) {
            return;
        }
        let changed = before != (r.phase, r.step, r.applied, r.stage);
        let due = inner
            .last_save
            .get(&id)
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if changed || due {
            inner.last_save.insert(id, Instant::now());
            if let Err(e) = self.save(&r) {
                // Another node's command won; its record is read on the next tick.
                tracing::warn!("rollout {id}: {e}");
                return;
            }
        }
        inner.rollouts.insert(id, r);
    }

    #[allow(clippy::too_many_arguments)]
    fn step_canary(
        &self,
        r: &mut Rollout,
        dt: u64,
        route: &str,
        to: &str,
        from: &str,
        steps: &[u32],
        interval_ms: u64,
        analysis: &Analysis,
    ) -> Result<(), RolloutError> {
        let weight = steps[r.step.min(steps.len() - 1)];
        if !r.applied {
            let msg = format!(
                "rollout {} step {}/{}: {weight}%",
                r.id,
                r.step + 1,
                steps.len()
            );
            self.set_split(
                route,
                r.region.as_deref(),
                &[(from.to_string(), 100 - weight), (to.to_string(), weight)],
                &msg,
            )?;
            r.applied = true;
            r.weight = weight;
            r.step_elapsed_ms = 0;
            self.sampler.lock().expect("sampler poisoned").reset(to);
            self.record(r, "step", &msg, json!({ "weight": weight }));
            return Ok(());
        }
        let table = self.control.current();
        let measured = self
            .sampler
            .lock()
            .expect("sampler poisoned")
            .measure(&table, to, analysis);
        r.measured = Some(measured.clone());
        let numbers = serde_json::to_value(&measured).unwrap_or(Value::Null);
        let mut inner = self.inner.lock().expect("rollouts poisoned");
        let mut held = |key: &'static str, cond: bool, for_ms: u64| {
            crate::rollout::analysis::held(&mut inner.since, (r.id, key), cond, for_ms)
        };
        let error_bad = analysis.errors_exceeded(&measured);
        let p99_bad = analysis.max_p99_ms.is_some_and(|max| {
            measured.window_requests >= analysis.min_requests && measured.p99_ms > max
        });
        let healthy_bad = held(
            "healthy",
            measured.healthy_fraction < analysis.min_healthy,
            analysis.healthy_for_ms,
        );
        let memory_bad = !r.memory_approved
            && held(
                "memory",
                measured.memory_fraction > analysis.max_memory,
                analysis.memory_for_ms,
            );
        drop(inner);
        if error_bad {
            let why = format!(
                "error rate {:.1}% > {:.1}% over the last {}s ({} of {} requests)",
                measured.error_rate * 100.0,
                analysis.max_error_rate * 100.0,
                analysis.error_for_ms / 1000,
                measured.window_errors,
                measured.window_requests
            );
            return self.revert(r, Phase::RolledBack, &why, numbers);
        }
        if p99_bad {
            let why = format!(
                "p99 latency {} ms > {} ms",
                measured.p99_ms,
                analysis.max_p99_ms.unwrap_or(0)
            );
            return self.revert(r, Phase::RolledBack, &why, numbers);
        }
        if healthy_bad {
            let why = format!(
                "healthy backends {:.0}% < {:.0}% for {}s",
                measured.healthy_fraction * 100.0,
                analysis.min_healthy * 100.0,
                analysis.healthy_for_ms / 1000
            );
            return self.revert(r, Phase::RolledBack, &why, numbers);
        }
        if memory_bad {
            r.phase = Phase::AwaitingApproval;
            r.reason = format!(
                "memory usage {:.1}% > {:.1}% for {}s: waiting for `nrdot rollout approve {}` or `abort`",
                measured.memory_fraction * 100.0,
                analysis.max_memory * 100.0,
                analysis.memory_for_ms / 1000,
                r.id
            );
            let why = r.reason.clone();
            self.record(r, "awaiting_approval", &why, numbers);
            return Ok(());
        }
        // A step passes only when the analysis held for the whole interval.
        if analysis.errors_exceeded(&measured) {
            r.step_elapsed_ms = 0;
        } else {
            r.step_elapsed_ms = r.step_elapsed_ms.saturating_add(dt);
        }
        if r.step_elapsed_ms >= interval_ms {
            self.record(
                r,
                "step_passed",
                &format!(
                    "step {}/{} ({weight}%) held for {}s",
                    r.step + 1,
                    steps.len(),
                    interval_ms / 1000
                ),
                numbers,
            );
            if r.step + 1 >= steps.len() {
                r.phase = Phase::Completed;
                r.reason = format!("{to} serves {weight}%");
                let why = r.reason.clone();
                self.record(r, "completed", &why, json!({ "weight": weight }));
            } else {
                r.step += 1;
                r.applied = false;
            }
        }
        Ok(())
    }

    async fn step_blue_green(
        &self,
        r: &mut Rollout,
        dt: u64,
        route: &str,
        to: &str,
        from: &str,
        keep_old_ms: u64,
    ) -> Result<(), RolloutError> {
        match r.step {
            0 => {
                let table = self.control.current();
                let Some(pool) = table.pools.iter().find(|p| p.config.name == to) else {
                    return Err(RolloutError::Invalid(format!(
                        "pool {to:?} is no longer configured"
                    )));
                };
                let mut ready = !pool.backends.is_empty();
                for b in &pool.backends {
                    // With a health check, its scheduled verdict; without, a connect now.
                    let ok = match &pool.config.health_check {
                        Some(_) => b.state.health() == nrdot_config::state::Health::Healthy,
                        None => crate::health::ready(None, &b.state.address).await,
                    };
                    ready &= ok && b.state.enabled.load(std::sync::atomic::Ordering::Relaxed);
                }
                let forced = r.step_elapsed_ms >= u64::MAX / 4;
                if !ready && !forced {
                    return Ok(());
                }
                let msg = format!(
                    "rollout {}: blue-green switch of route {route} from {from} to {to}",
                    r.id
                );
                let region = r.region.as_deref();
                self.set_split(
                    route,
                    region,
                    &[(from.to_string(), 0), (to.to_string(), 100)],
                    &msg,
                )?;
                self.sampler.lock().expect("sampler poisoned").reset(to);
                r.step = 1;
                r.weight = 100;
                r.applied = true;
                r.step_elapsed_ms = 0;
                self.record(
                    r,
                    "switched",
                    &format!(
                        "{to} is healthy; traffic switched; {from} kept for {}s",
                        keep_old_ms / 1000
                    ),
                    json!({ "weight": 100 }),
                );
            }
            1 => {
                r.step_elapsed_ms = r.step_elapsed_ms.saturating_add(dt);
                if r.step_elapsed_ms >= keep_old_ms {
                    let msg = format!("rollout {}: removed {from} after the keep window", r.id);
                    self.edit_config(&msg, |text| nrdot_config::edit::remove_pool(text, from))?;
                    r.step = 2;
                    r.phase = Phase::Completed;
                    r.reason = format!("{to} serves 100%; {from} removed");
                    let why = r.reason.clone();
                    self.record(r, "completed", &why, json!({}));
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn step_rolling(
        &self,
        r: &mut Rollout,
        dt: u64,
        pool: &str,
        batch: usize,
        hook: &str,
        (wait_ms, pause_ms): (u64, u64),
    ) -> Result<(), RolloutError> {
        let table = self.control.current();
        let Some(p) = table.pools.iter().find(|p| p.config.name == pool) else {
            return Err(RolloutError::Invalid(format!(
                "pool {pool:?} is no longer configured"
            )));
        };
        let servers: Vec<String> = p
            .backends
            .iter()
            .map(|b| b.state.address.to_string())
            .collect();
        let batches: Vec<Vec<String>> = servers.chunks(batch).map(|c| c.to_vec()).collect();
        let Some(current) = batches.get(r.step).cloned() else {
            r.phase = Phase::Completed;
            r.reason = format!("{} server(s) upgraded", servers.len());
            let why = r.reason.clone();
            self.record(r, "completed", &why, json!({}));
            return Ok(());
        };
        let ids: Vec<String> = current.iter().map(|a| format!("{pool}/{a}")).collect();
        let actor = format!("rollout {}", r.id);
        r.step_elapsed_ms = r.step_elapsed_ms.saturating_add(dt);
        let fail = |r: &mut Rollout, why: String| -> Result<(), RolloutError> {
            r.phase = Phase::Failed;
            r.reason = why.clone();
            self.record(
                r,
                "failed",
                &why,
                json!({ "batch": r.step + 1, "servers": current }),
            );
            Ok(())
        };
        match r.stage {
            Some(Stage::Pause) => {
                if r.step_elapsed_ms >= pause_ms {
                    r.stage = None;
                    r.step_elapsed_ms = 0;
                    self.record(
                        r,
                        "pause_over",
                        &format!("batch {} next", r.step + 1),
                        json!({}),
                    );
                }
            }
            None => {
                for id in &ids {
                    self.control.set_enabled(id, false, &actor)?;
                }
                r.stage = Some(Stage::Drain);
                r.step_elapsed_ms = 0;
                self.record(
                    r,
                    "draining",
                    &format!(
                        "batch {}/{}: draining {}",
                        r.step + 1,
                        batches.len(),
                        current.join(", ")
                    ),
                    json!({}),
                );
            }
            Some(Stage::Drain) => {
                let in_flight: u64 = p
                    .backends
                    .iter()
                    .filter(|b| {
                        current
                            .iter()
                            .any(|a| a.as_str() == b.state.address.as_ref())
                    })
                    .map(|b| b.state.in_flight.load(std::sync::atomic::Ordering::Relaxed))
                    .sum();
                if in_flight == 0 || r.step_elapsed_ms >= wait_ms {
                    r.stage = Some(Stage::Hook);
                    r.step_elapsed_ms = 0;
                    self.record(
                        r,
                        "drained",
                        &format!(
                            "batch {}: {in_flight} request(s) still in flight",
                            r.step + 1
                        ),
                        json!({ "in_flight": in_flight }),
                    );
                    let key = (r.id, r.step);
                    self.hooks.lock().expect("hooks poisoned").insert(key, None);
                    let servers = current.clone();
                    let (hook, wait) = (hook.to_string(), Duration::from_millis(wait_ms));
                    let shared = self.hook_results();
                    tokio::spawn(async move {
                        let result = run_hooks(&hook, &servers, wait).await;
                        shared
                            .lock()
                            .expect("hooks poisoned")
                            .insert(key, Some(result));
                    });
                }
            }
            Some(Stage::Hook) => {
                let key = (r.id, r.step);
                let done = self
                    .hook_results()
                    .lock()
                    .expect("hooks poisoned")
                    .get(&key)
                    .cloned()
                    .flatten();
                match done {
                    None if r.step_elapsed_ms < wait_ms.saturating_add(1000) => {}
                    None => {
                        return fail(r, format!("hook did not finish within {}s", wait_ms / 1000))
                    }
                    Some(Err(e)) => return fail(r, format!("hook failed: {e}")),
                    Some(Ok(())) => {
                        r.stage = Some(Stage::Health);
                        r.step_elapsed_ms = 0;
                        self.record(
                            r,
                            "hook_done",
                            &format!("batch {}: hook succeeded", r.step + 1),
                            json!({}),
                        );
                    }
                }
            }
            Some(Stage::Health) => {
                let mut all = true;
                for a in &current {
                    let ok = crate::health::ready(p.config.health_check.as_ref(), a).await;
                    all &= ok;
                }
                if all {
                    for id in &ids {
                        self.control.set_enabled(id, true, &actor)?;
                    }
                    // The next judgement covers this batch's servers only.
                    self.sampler.lock().expect("sampler poisoned").reset(pool);
                    self.record(
                        r,
                        "batch_done",
                        &format!(
                            "batch {}/{}: {} healthy and enabled",
                            r.step + 1,
                            batches.len(),
                            current.join(", ")
                        ),
                        json!({}),
                    );
                    r.step += 1;
                    // The playbook's pause between batches; none after the last.
                    let more = r.step < batches.len();
                    r.stage = (pause_ms > 0 && more).then_some(Stage::Pause);
                    r.step_elapsed_ms = 0;
                } else if r.step_elapsed_ms >= wait_ms {
                    return fail(
                        r,
                        format!(
                            "batch {}: health check did not pass within {}s; servers left disabled",
                            r.step + 1,
                            wait_ms / 1000
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// The blue-green pre-switch check: true once it passed (or there is none). Started when
    /// first asked; a failure ends the rollout with the traffic still on `from`.
    fn checked(&self, r: &mut Rollout, to: &str, from: &str, check: Option<&str>) -> bool {
        let Some(cmd) = check else { return true };
        let key = (r.id, CHECK);
        let state = self
            .hooks
            .lock()
            .expect("hooks poisoned")
            .get(&key)
            .cloned();
        match state {
            None => {
                self.hooks.lock().expect("hooks poisoned").insert(key, None);
                let cmd = cmd.replace("{pool}", to);
                self.record(
                    r,
                    "checking",
                    &format!("running {cmd:?} before the switch"),
                    json!({}),
                );
                let shared = self.hook_results();
                tokio::spawn(async move {
                    let result = run_hooks(&cmd, &[String::new()], Duration::from_secs(300)).await;
                    shared
                        .lock()
                        .expect("hooks poisoned")
                        .insert(key, Some(result));
                });
                false
            }
            Some(None) => false,
            Some(Some(Ok(()))) => {
                if !r.events.iter().any(|e| e.kind == "check_passed") {
                    self.record(r, "check_passed", "pre-switch check passed", json!({}));
                }
                true
            }
            Some(Some(Err(e))) => {
                r.phase = Phase::Failed;
                r.reason = format!("pre-switch check failed, traffic stays on {from}: {e}");
                let why = r.reason.clone();
                self.record(r, "failed", &why, json!({}));
                false
            }
        }
    }

    fn hook_results(&self) -> HookResults {
        Arc::clone(&self.hooks)
    }
}

/// Runs the hook once per server, one after the other; the first failure stops.
async fn run_hooks(hook: &str, servers: &[String], wait: Duration) -> Result<(), String> {
    for s in servers {
        let cmd = hook.replace("{server}", s);
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(wait, child).await {
            Err(_) => return Err(format!("{cmd:?} did not finish within {}s", wait.as_secs())),
            Ok(Err(e)) => return Err(format!("{cmd:?}: {e}")),
            Ok(Ok(out)) if !out.status.success() => {
                return Err(format!(
                    "{cmd:?} exited with {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
            Ok(Ok(_)) => {}
        }
    }
    Ok(())
}

impl Plan {
    /// The name the API uses (`blue-green`).
    pub fn kind(&self) -> &'static str {
        match self {
            Plan::Canary { .. } => "canary",
            Plan::BlueGreen { .. } => "blue-green",
            Plan::Rolling { .. } => "rolling",
            Plan::Guard { .. } => "guard",
        }
    }

    /// What it changes: `route app`, `pool api`, `config version 7`.
    pub fn target(&self) -> String {
        plan_target(self)
    }
}

fn plan_target(p: &Plan) -> String {
    match p {
        Plan::Canary { route, .. } | Plan::BlueGreen { route, .. } => format!("route {route}"),
        Plan::Rolling { pool, .. } => format!("pool {pool}"),
        Plan::Guard { after, .. } => format!("config version {after}"),
    }
}

fn describe(p: &Plan) -> String {
    match p {
        Plan::Canary {
            route,
            to,
            from,
            steps,
            interval_ms,
            durations_ms,
            ..
        } => {
            let plan: Vec<String> = steps
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    format!(
                        "{w}% for {}s",
                        step_ms(durations_ms, *interval_ms, i) / 1000
                    )
                })
                .collect();
            format!(
                "canary of {to} on route {route} (from {from}): {}",
                plan.join(", ")
            )
        }
        Plan::BlueGreen {
            route,
            to,
            from,
            keep_old_ms,
            check,
            ..
        } => format!(
            "blue-green of route {route} from {from} to {to}, keeping {from} {}s{}",
            keep_old_ms / 1000,
            check
                .as_ref()
                .map(|c| format!(", after {c:?} passes"))
                .unwrap_or_default()
        ),
        Plan::Rolling {
            pool, batch, hook, ..
        } => format!("rolling upgrade of pool {pool}, {batch} at a time, hook {hook:?}"),
        Plan::Guard {
            before,
            after,
            pools,
            window_ms,
            ..
        } => format!(
            "guard of config version {after} (back to {before} on a trigger) watching {} for {}s",
            pools.join(", "),
            window_ms / 1000
        ),
    }
}
