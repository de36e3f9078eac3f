//! Behaviour of the rollout state machine that the other tests left unpinned, found by
//! mutation testing (`cargo xtask mutants --scope canary`, see `docs/mutants.md`).

use degrade_canary::{CanaryConfig, CanaryMachine, CanaryPhase, CanaryState};
use tokio::time::Instant;

#[test]
fn a_saved_state_at_full_weight_resumes_and_one_above_is_refused() {
    let full = CanaryState {
        phase: CanaryPhase::Progressing,
        step: 5,
        weight_bp: 10_000,
        inconclusive: 0,
    };
    let r = CanaryMachine::resume(CanaryConfig::default(), full, Instant::now()).unwrap();
    assert_eq!(r.state(), full);
    let over = CanaryState {
        weight_bp: 10_001,
        ..full
    };
    let err = CanaryMachine::resume(CanaryConfig::default(), over, Instant::now()).unwrap_err();
    assert_eq!(err.field(), "state.weight_bp");
}
