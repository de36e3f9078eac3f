//! Behaviour of the `TimingSampler` that the other tests left unpinned, found by mutation
//! testing (`cargo xtask mutants --scope ladder-windows -- --re TimingSampler`, see
//! `docs/mutants.md`).

use degrade_core::counter::TimingSampler;

#[test]
fn a_fixed_sampler_rounds_down_to_a_power_of_two_within_one_to_sixteen() {
    for (asked, every) in [
        (0, 1),
        (1, 1),
        (2, 2),
        (3, 2),
        (10, 8),
        (15, 8),
        (16, 16),
        (17, 16),
        (1_000, 16),
        (u64::MAX, 16),
    ] {
        let s = TimingSampler::fixed(asked);
        assert_eq!(s.every(), every, "fixed({asked})");
        let timed: Vec<u64> = (0..40).filter(|&seq| s.is_timed(seq)).collect();
        let expected: Vec<u64> = (0..40).step_by(every as usize).collect();
        assert_eq!(timed, expected, "fixed({asked})");
    }
}

#[test]
fn a_fixed_sampler_ignores_every_reader() {
    let reader = TimingSampler::new_reader();
    for s in [TimingSampler::fixed(4), TimingSampler::every_call()] {
        let before = s.every();
        // A quiet window would set a reader's sampler to 1, a busy one to 16.
        s.window_saw(reader, 0, 1_000);
        assert_eq!(s.every(), before);
        s.window_saw(reader, 1_000_000, 1_000);
        assert_eq!(s.every(), before);
    }
    assert_eq!(TimingSampler::every_call().every(), 1);
    assert!((0..64).all(|seq| TimingSampler::every_call().is_timed(seq)));
}

#[test]
fn readers_get_distinct_ids_that_are_never_nobody() {
    let ids: Vec<u64> = (0..1_000).map(|_| TimingSampler::new_reader()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len());
    assert!(ids.iter().all(|&id| id != 0 && id <= u64::MAX >> 8));
}

#[test]
fn a_sampler_debugs_as_its_rate_and_whether_it_is_fixed() {
    let s = TimingSampler::new();
    s.window_saw(TimingSampler::new_reader(), 4_000, 1_000);
    assert_eq!(format!("{s:?}"), "TimingSampler { every: 4, fixed: false }");
    assert_eq!(
        format!("{:?}", TimingSampler::fixed(8)),
        "TimingSampler { every: 8, fixed: true }"
    );
    assert_eq!(TimingSampler::default().every(), 1);
}
