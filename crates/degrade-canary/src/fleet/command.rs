//! Manual gates across a fleet: a command (promote, abort, pause, resume) written to Redis by
//! any instance or an operator tool, applied by the leader exactly once.
//!
//! Issuing appends the command to the rollout's pending list (`<prefix>:{<name>}:commands`,
//! at most [`MAX_PENDING`] entries) and an `issued` entry to its audit list
//! (`...:audit`, capped at [`audit_len`](super::FleetCanaryConfig::audit_len)), in one script
//! that refuses a command on a finished rollout. The leader reads the pending list every poll,
//! applies the batch to its machine with [`apply`] (a pure function of the state, the commands
//! and the instant), and writes the resulting state, clears the list and records each outcome
//! in the audit list in one fenced script: a deposed leader's write is refused (its commands
//! stay pending for the next leader), and a write that would clear a command it has not seen
//! (one issued while it computed) is refused too, so it computes again with every command.
//! Commands issued while no leader is alive wait in the list for the next one.

use crate::controller::Gate;
use crate::machine::{CanaryEvent, CanaryMachine, CanaryPhase};
use degrade_core::BoxError;
use std::fmt;
use tokio::time::Instant;

/// The most commands waiting for the leader; issuing one more is refused with
/// [`FleetCommandError::Backlog`]. Operators issue a handful; a full list means no leader has
/// been alive for a while.
pub const MAX_PENDING: usize = 64;
/// Operator text is cut to this many bytes (who) and ten times that (why).
pub(crate) const MAX_WHO: usize = 128;

/// Appends a command and its audit entry. KEYS: state, commands, audit, seq. ARGV: gate, who,
/// why, pending cap, audit cap. Returns `{id, server ms}`; `{-1, phase}` when the stored
/// rollout has ended; `{-2, 0}` when the pending list is full.
pub(crate) const ISSUE_LUA: &str = r"
local st = redis.call('GET', KEYS[1])
if st then
  local ok, v = pcall(cjson.decode, st)
  if ok and type(v) == 'table' and type(v.state) == 'table' then
    local p = v.state.phase
    if p == 'promoted' or p == 'rolled_back' then
      return {-1, p}
    end
  end
end
if redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[4]) then
  return {-2, 0}
end
local t = redis.call('TIME')
local now = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
local id = redis.call('INCR', KEYS[4])
local rest = ARGV[1] .. '\t' .. id .. '\t' .. ARGV[2] .. '\t' .. ARGV[3]
redis.call('RPUSH', KEYS[2], now .. '\t' .. rest)
redis.call('LPUSH', KEYS[3], now .. '\tissued\t0\t' .. rest)
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
return {id, now}
";

/// A gate as a word (`promote`, `abort`, `pause`, `resume`).
///
/// ```
/// use degrade_canary::Gate;
/// use degrade_canary::fleet::{gate_name, parse_gate};
/// assert_eq!(gate_name(Gate::Abort), "abort");
/// assert_eq!(parse_gate("pause"), Some(Gate::Pause));
/// assert_eq!(parse_gate("Pause"), None);
/// ```
pub fn gate_name(gate: Gate) -> &'static str {
    match gate {
        Gate::Promote => "promote",
        Gate::Abort => "abort",
        Gate::Pause => "pause",
        Gate::Resume => "resume",
    }
}

/// The gate a word names ([`gate_name`]'s inverse); `None` for anything else.
///
/// ```
/// # use degrade_canary::{Gate, fleet::parse_gate};
/// assert_eq!(parse_gate("promote"), Some(Gate::Promote));
/// assert_eq!(parse_gate("rollback"), None);
/// ```
pub fn parse_gate(word: &str) -> Option<Gate> {
    Some(match word {
        "promote" => Gate::Promote,
        "abort" => Gate::Abort,
        "pause" => Gate::Pause,
        "resume" => Gate::Resume,
        _ => return None,
    })
}

/// One command as the pending list holds it.
///
/// ```
/// use degrade_canary::Gate;
/// use degrade_canary::fleet::FleetCommand;
/// let c = FleetCommand::new(7, Gate::Abort, "alice", "errors on v2");
/// assert_eq!((c.id, c.gate, c.who.as_str()), (7, Gate::Abort, "alice"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FleetCommand {
    /// Its number in this rollout (from 1, in the order issued).
    pub id: u64,
    /// What.
    pub gate: Gate,
    /// Who issued it.
    pub who: String,
    /// Why.
    pub why: String,
    /// When, in milliseconds since 1970 on the Redis server's clock (0 if not known).
    pub at_ms: u64,
}

impl FleetCommand {
    /// A command numbered `id` (for tests and tools; issued commands are numbered by Redis).
    ///
    /// ```
    /// # use degrade_canary::{Gate, fleet::FleetCommand};
    /// assert_eq!(FleetCommand::new(1, Gate::Pause, "bob", "").at_ms, 0);
    /// ```
    pub fn new(id: u64, gate: Gate, who: &str, why: &str) -> Self {
        Self {
            id,
            gate,
            who: clean(who, MAX_WHO),
            why: clean(why, 10 * MAX_WHO),
            at_ms: 0,
        }
    }

    /// Reads `<ms>\t<gate>\t<id>\t<who>\t<why>`; `None` for anything else (network input).
    pub(crate) fn parse(v: &str) -> Option<Self> {
        let f: Vec<&str> = v.splitn(5, '\t').collect();
        let [at, gate, id, who, why] = f.as_slice() else {
            return None;
        };
        Some(Self {
            id: id.parse().ok()?,
            gate: parse_gate(gate)?,
            who: clean(who, MAX_WHO),
            why: clean(why, 10 * MAX_WHO),
            at_ms: at.parse().ok()?,
        })
    }
}

/// What the leader did with one command ([`apply`]).
///
/// ```
/// use degrade_canary::fleet::CommandOutcome;
/// assert_eq!(CommandOutcome::Applied.as_str(), "applied");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandOutcome {
    /// It changed the rollout.
    Applied,
    /// It changed nothing (a pause of a paused rollout, a resume of a progressing one).
    Unchanged,
    /// An abort in the same batch won over it.
    Superseded,
    /// The rollout had ended (by the judge, or by an earlier command) before it came to it.
    Finished,
}

impl CommandOutcome {
    /// The word in the audit list and in tracing.
    ///
    /// ```
    /// # use degrade_canary::fleet::CommandOutcome;
    /// assert_eq!(CommandOutcome::Superseded.as_str(), "superseded");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            CommandOutcome::Applied => "applied",
            CommandOutcome::Unchanged => "unchanged",
            CommandOutcome::Superseded => "superseded",
            CommandOutcome::Finished => "finished",
        }
    }
}

/// Applies a batch of pending commands (in the order issued) to the rollout at `now`; one
/// outcome per command, in order. Pure: the machine is the only thing it changes.
///
/// * A rollout that has ended takes no command ([`CommandOutcome::Finished`]).
/// * An abort wins over everything issued with it: if the batch holds one, the rollout is
///   rolled back by the first abort and every other command of the batch is
///   [`CommandOutcome::Superseded`] — a promote and an abort issued at the same time (before the
///   leader saw either) roll back, whatever their order.
/// * Otherwise the commands apply one after another as the local controller's gates do; once
///   one ends the rollout (a promote), the rest are [`CommandOutcome::Finished`].
///
/// ```
/// use degrade_canary::{CanaryConfig, CanaryMachine, CanaryPhase, Gate};
/// use degrade_canary::fleet::{apply, FleetCommand, CommandOutcome};
/// let now = tokio::time::Instant::now();
/// let mut m = CanaryMachine::new(CanaryConfig::default(), now).unwrap();
/// let batch = [
///     FleetCommand::new(1, Gate::Promote, "alice", "looks fine"),
///     FleetCommand::new(2, Gate::Abort, "bob", "errors in region b"),
/// ];
/// assert_eq!(apply(&mut m, &batch, now), [CommandOutcome::Superseded, CommandOutcome::Applied]);
/// assert_eq!((m.state().phase, m.state().weight_bp), (CanaryPhase::RolledBack, 0));
/// ```
pub fn apply(
    machine: &mut CanaryMachine,
    commands: &[FleetCommand],
    now: Instant,
) -> Vec<CommandOutcome> {
    if machine.state().phase.is_terminal() {
        return vec![CommandOutcome::Finished; commands.len()];
    }
    if let Some(first) = commands.iter().position(|c| c.gate == Gate::Abort) {
        machine.on(CanaryEvent::Abort, now);
        return (0..commands.len())
            .map(|i| {
                if i == first {
                    CommandOutcome::Applied
                } else {
                    CommandOutcome::Superseded
                }
            })
            .collect();
    }
    commands
        .iter()
        .map(|c| {
            let before = machine.state();
            if before.phase.is_terminal() {
                return CommandOutcome::Finished;
            }
            machine.on(c.gate.into(), now);
            if machine.state() == before {
                CommandOutcome::Unchanged
            } else {
                CommandOutcome::Applied
            }
        })
        .collect()
}

/// Why a command was not issued.
///
/// ```
/// use degrade_canary::CanaryPhase;
/// use degrade_canary::fleet::FleetCommandError;
/// let e = FleetCommandError::Finished(CanaryPhase::Promoted);
/// assert_eq!(e.to_string(), "the rollout has already ended (Promoted)");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum FleetCommandError {
    /// The rollout in Redis is promoted or rolled back: no gate changes it any more.
    Finished(CanaryPhase),
    /// [`MAX_PENDING`] commands already wait for a leader.
    Backlog,
    /// Redis could not be reached, did not answer within the timeout, or answered an error;
    /// the command may or may not have been recorded (read [`FleetGates::pending`](super::FleetGates::pending)).
    Redis(BoxError),
}

impl fmt::Display for FleetCommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Finished(p) => write!(f, "the rollout has already ended ({p:?})"),
            Self::Backlog => write!(
                f,
                "{MAX_PENDING} commands already wait for a leader; none is applying them"
            ),
            Self::Redis(e) => write!(f, "fleet canary command: {e}"),
        }
    }
}

impl std::error::Error for FleetCommandError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Redis(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

/// One entry of a rollout's audit list, newest first ([`FleetGates::audit`](super::FleetGates::audit)).
///
/// ```
/// use degrade_canary::fleet::FleetAuditEntry;
/// let e = FleetAuditEntry::default();
/// assert!(e.action.is_empty() && e.token == 0);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FleetAuditEntry {
    /// When, in milliseconds since 1970 on the Redis server's clock.
    pub at_ms: u64,
    /// `issued`, or the leader's [`CommandOutcome`] (`applied`, `unchanged`, `superseded`,
    /// `finished`).
    pub action: String,
    /// The fencing token of the leader that applied it (0 for `issued`).
    pub token: u64,
    /// The gate (`promote`, `abort`, `pause`, `resume`).
    pub gate: String,
    /// The command's number.
    pub id: u64,
    /// Who issued it.
    pub who: String,
    /// Why.
    pub why: String,
}

/// Reads `<ms>\t<action>\t<token>\t<gate>\t<id>\t<who>\t<why>`.
pub(crate) fn parse_audit(v: &str) -> Option<FleetAuditEntry> {
    let f: Vec<&str> = v.splitn(7, '\t').collect();
    let [at, action, token, gate, id, who, why] = f.as_slice() else {
        return None;
    };
    Some(FleetAuditEntry {
        at_ms: at.parse().ok()?,
        action: (*action).to_owned(),
        token: token.parse().ok()?,
        gate: (*gate).to_owned(),
        id: id.parse().ok()?,
        who: (*who).to_owned(),
        why: (*why).to_owned(),
    })
}

/// The audit entry's tail (after the server's time) for `c` applied with `outcome` under
/// `token`.
pub(crate) fn audit_tail(c: &FleetCommand, outcome: CommandOutcome, token: u64) -> String {
    format!(
        "{}\t{token}\t{}\t{}\t{}\t{}",
        outcome.as_str(),
        gate_name(c.gate),
        c.id,
        c.who,
        c.why
    )
}

/// Operator text made safe to store: control characters (the separators) become spaces, and
/// it is cut to `max` bytes on a character boundary.
pub(crate) fn clean(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{CanaryConfig, CanaryState, PauseReason};
    use proptest::prelude::*;

    fn gate() -> impl Strategy<Value = Gate> {
        prop_oneof![
            Just(Gate::Promote),
            Just(Gate::Abort),
            Just(Gate::Pause),
            Just(Gate::Resume)
        ]
    }

    fn state() -> impl Strategy<Value = CanaryState> {
        let phase = prop_oneof![
            Just(CanaryPhase::Progressing),
            Just(CanaryPhase::Paused(PauseReason::Manual)),
            Just(CanaryPhase::Paused(PauseReason::Inconclusive)),
            Just(CanaryPhase::Promoted),
            Just(CanaryPhase::RolledBack),
        ];
        (phase, 0usize..6, 0u32..3).prop_map(|(phase, step, inconclusive)| {
            let weights = [100, 500, 1_000, 2_500, 5_000, 10_000];
            CanaryState {
                phase,
                step,
                weight_bp: if phase == CanaryPhase::RolledBack {
                    0
                } else {
                    weights[step]
                },
                inconclusive,
            }
        })
    }

    proptest! {
        /// Every batch on every state: one outcome per command; an ended rollout takes none;
        /// an abort in the batch rolls back and supersedes the rest whatever the order;
        /// otherwise the batch is the local gates one after another.
        #[test]
        fn a_batch_of_commands_is_the_gates_in_order_unless_an_abort_is_among_them(
            s in state(),
            gates in proptest::collection::vec(gate(), 0..8),
        ) {
            let now = Instant::now();
            let cfg = CanaryConfig::default();
            let batch: Vec<FleetCommand> = gates
                .iter()
                .enumerate()
                .map(|(i, g)| FleetCommand::new(i as u64 + 1, *g, "op", ""))
                .collect();
            let mut m = CanaryMachine::resume(cfg.clone(), s, now).unwrap();
            let out = apply(&mut m, &batch, now);
            prop_assert_eq!(out.len(), batch.len());
            if s.phase.is_terminal() {
                prop_assert!(out.iter().all(|o| *o == CommandOutcome::Finished));
                prop_assert_eq!(m.state(), s);
            } else if let Some(first) = gates.iter().position(|g| *g == Gate::Abort) {
                prop_assert_eq!(m.state().phase, CanaryPhase::RolledBack);
                prop_assert_eq!(m.state().weight_bp, 0);
                prop_assert_eq!(m.state().step, s.step);
                for (i, o) in out.iter().enumerate() {
                    let want = if i == first { CommandOutcome::Applied } else { CommandOutcome::Superseded };
                    prop_assert_eq!(*o, want);
                }
            } else {
                let mut model = CanaryMachine::resume(cfg, s, now).unwrap();
                for (g, o) in gates.iter().zip(&out) {
                    let before = model.state();
                    let want = if before.phase.is_terminal() {
                        CommandOutcome::Finished
                    } else {
                        model.on((*g).into(), now);
                        if model.state() == before { CommandOutcome::Unchanged } else { CommandOutcome::Applied }
                    };
                    prop_assert_eq!(*o, want);
                }
                prop_assert_eq!(m.state(), model.state());
                // A promote never moves the weight; nothing here sets it to 0.
                prop_assert_eq!(m.state().weight_bp, s.weight_bp);
            }
        }
    }

    #[test]
    fn pending_entries_that_are_not_commands_are_not_read() {
        for v in [
            "",
            "1\tabort",
            "x\tabort\t1\ta\tb",
            "1\tdrop\t1\ta\tb",
            "1\tabort\t-1\ta\tb",
        ] {
            assert_eq!(FleetCommand::parse(v), None, "{v:?}");
        }
        let c = FleetCommand::parse("5\tpause\t3\talice\twhy\twith a tab").unwrap();
        assert_eq!((c.at_ms, c.gate, c.id), (5, Gate::Pause, 3));
        assert_eq!(c.why, "why with a tab");
    }

    #[test]
    fn operator_text_is_cut_and_loses_its_separators() {
        let c = FleetCommand::new(1, Gate::Abort, &"é".repeat(200), "a\tb\nc");
        assert!(c.who.len() <= MAX_WHO && c.who.chars().all(|ch| ch == 'é'));
        assert_eq!(c.why, "a b c");
    }
}
