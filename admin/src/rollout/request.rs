//! What an operator asks of the rollout controller: a rollout to start (by kind, with typed
//! duration, percent and step arguments that still read what scripts sent as loose JSON) and
//! the commands for a running one. Part of the admin API's types (`crate::api` re-exports
//! them), kept here so the controller does not depend on the API layer above it.
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A duration: a number of seconds, or text such as `"30s"`, `"5m"`, `"1h"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum DurationArg {
    /// Seconds.
    Seconds(u64),
    /// `30s`, `5m`, `1h`, `500ms`.
    Text(String),
}

/// A share: `0.05`, `5` (read as percent when above 1), or `"5%"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PercentArg {
    /// A fraction, or a percentage when above 1.
    Number(f64),
    /// `"5%"` or `"5"`.
    Text(String),
}

/// One canary step: a weight, optionally with its own observation time (`"10:30m"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StepArg {
    /// A weight in percent.
    Weight(u64),
    /// `"10"`, `"10%"` or `"10:30m"`.
    Text(String),
}

/// Canary steps: `"10:30m,50:1h,100"` or a list of steps. Weights increase and end at 100.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StepsArg {
    /// Comma-separated steps.
    Text(String),
    /// One step each.
    List(Vec<StepArg>),
}

/// The analysis triggers a rollout watches (the playbook's defaults when absent).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Triggers {
    /// Error rate above which the rollout rolls back (default 5%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<PercentArg>,
    /// For how long (default 5m; also the analysis window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_for: Option<DurationArg>,
    /// p99 latency above which the rollout rolls back (not checked when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99: Option<DurationArg>,
    /// Share of healthy servers below which the rollout rolls back (default 50%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_healthy: Option<PercentArg>,
    /// For how long (default 2m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_for: Option<DurationArg>,
    /// Memory use above which the rollout waits for approval (default 90%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_threshold: Option<PercentArg>,
    /// For how long (default 10m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_for: Option<DurationArg>,
    /// Requests a window needs before its error rate counts (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
}

/// `POST /api/v2/rollouts`: what to roll out, by kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum StartRollout {
    /// Raise `to`'s share of `route` step by step, rolling back on bad numbers.
    Canary {
        /// Route whose split changes.
        route: String,
        /// The new pool.
        to: String,
        /// The old pool (default: the route's largest other pool).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        /// Default `10,50,100`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        steps: Option<StepsArg>,
        /// Observation time of a step without its own (default 30m).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interval: Option<DurationArg>,
        /// Only the nodes of this region (a cluster's `[cluster] region`) change; the rest
        /// keep the route as it is. Widen with a rollout in the next region, then one without.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
        /// Triggers.
        #[serde(flatten)]
        triggers: Triggers,
    },
    /// Switch `route` from `from` to `to` at once, keeping the old pool for `keep_old`.
    BlueGreen {
        /// Route to switch.
        route: String,
        /// The new pool.
        to: String,
        /// The old pool (default: the route's largest other pool).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        /// How long the old pool stays ready for an instant rollback (default 24h).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keep_old: Option<DurationArg>,
        /// A command that must succeed against the new pool before the switch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        check: Option<String>,
        /// Watch the triggers this long after the switch and switch back on a breach.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        guard: Option<DurationArg>,
        /// Only the nodes of this region (a cluster's `[cluster] region`) change; the rest
        /// keep the route as it is. Widen with a rollout in the next region, then one without.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
        /// Triggers of the guard.
        #[serde(flatten)]
        triggers: Triggers,
    },
    /// Drain, upgrade (by `hook`) and re-enable `pool`'s servers, `batch` at a time.
    Rolling {
        /// Pool whose servers are upgraded.
        pool: String,
        /// Servers at a time (default 1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        batch: Option<u64>,
        /// Command run for each server (`NRDOT_SERVER` names it).
        hook: String,
        /// Longest wait for a server to drain and to come back healthy (default 5m).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wait: Option<DurationArg>,
        /// Pause between batches.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pause: Option<DurationArg>,
        /// Triggers.
        #[serde(flatten)]
        triggers: Triggers,
    },
}

/// What an operator can tell a running rollout (`POST /api/v2/rollouts/{id}/{command}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RolloutCommand {
    /// End the current step now (canary) or switch now (blue-green).
    Promote,
    /// Stop stepping; traffic stays where it is.
    Pause,
    /// Continue a paused rollout.
    Resume,
    /// Continue after a trigger that needs a human (memory).
    Approve,
    /// End it with traffic back on the old side.
    Abort,
    /// Like abort, and also after completion while the old pool is kept.
    Rollback,
}

impl RolloutCommand {
    /// Every command, for help texts and the OpenAPI document.
    pub const ALL: [RolloutCommand; 6] = [
        RolloutCommand::Promote,
        RolloutCommand::Pause,
        RolloutCommand::Resume,
        RolloutCommand::Approve,
        RolloutCommand::Abort,
        RolloutCommand::Rollback,
    ];

    /// The word in the URL.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutCommand::Promote => "promote",
            RolloutCommand::Pause => "pause",
            RolloutCommand::Resume => "resume",
            RolloutCommand::Approve => "approve",
            RolloutCommand::Abort => "abort",
            RolloutCommand::Rollback => "rollback",
        }
    }
}

impl std::str::FromStr for RolloutCommand {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RolloutCommand::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                format!("unknown command {s:?} (promote, pause, resume, approve, abort, rollback)")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_requests_read_what_the_cli_and_scripts_send() {
        let canary: StartRollout = serde_json::from_str(
            r#"{"kind":"canary","route":"app","to":"v2","from":null,"steps":"10:30m,50,100","interval":"30s","max_error_rate":"5%","min_requests":20}"#,
        )
        .expect("canary");
        let StartRollout::Canary {
            steps, triggers, ..
        } = canary
        else {
            panic!("not a canary")
        };
        assert_eq!(steps, Some(StepsArg::Text("10:30m,50,100".into())));
        assert_eq!(triggers.max_error_rate, Some(PercentArg::Text("5%".into())));
        assert_eq!(triggers.min_requests, Some(20));
        let listed: StartRollout = serde_json::from_str(
            r#"{"kind":"canary","route":"app","to":"v2","steps":[10,"50:1m",100],"interval":5}"#,
        )
        .expect("list");
        assert!(matches!(
            listed,
            StartRollout::Canary { steps: Some(StepsArg::List(ref l)), interval: Some(DurationArg::Seconds(5)), .. } if l.len() == 3
        ));
        assert!(serde_json::from_str::<StartRollout>(r#"{"kind":"rolling","pool":"p"}"#).is_err());
        assert!(serde_json::from_str::<StartRollout>(r#"{"kind":"nope"}"#).is_err());
        assert_eq!("pause".parse(), Ok(RolloutCommand::Pause));
        assert!("stop".parse::<RolloutCommand>().is_err());
    }
}
