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

#[test]
fn a_warm_sampler_times_the_first_calls_then_one_in_sixteen_until_read() {
    let n = TimingSampler::UNREAD_CALLS;
    assert_eq!(n, 65_536);
    let s = TimingSampler::warm();
    assert_eq!(s.every(), 1);
    assert_eq!(format!("{s:?}"), "TimingSampler { every: 1, fixed: false }");
    // The last warm call and the ones after it: timed exactly at the multiples of 16.
    let timed: Vec<u64> = (n - 2..n + 40).filter(|&seq| s.is_timed(seq)).collect();
    assert_eq!(timed, [n - 2, n - 1, n, n + 16, n + 32]);
    assert!(!s.is_timed(u64::MAX));

    // A reader's busy window sets 1 in 4 for every call, the warm ones too.
    let reader = TimingSampler::new_reader();
    s.window_saw(reader, 4_000, 1_000);
    assert_eq!(s.every(), 4);
    let timed: Vec<u64> = (0..9).filter(|&seq| s.is_timed(seq)).collect();
    assert_eq!(timed, [0, 4, 8]);
    assert!(s.is_timed(n + 4));
    // A second reader may only lower it, as for a `new` sampler: the first read owns it.
    s.window_saw(TimingSampler::new_reader(), 1_000_000, 1_000);
    assert_eq!(s.every(), 4);

    // The first read of a warm sampler may set any rate (nobody owned it).
    let s = TimingSampler::warm();
    s.window_saw(TimingSampler::new_reader(), 1_000_000, 1_000);
    assert_eq!(s.every(), 16);
    assert!(!s.is_timed(1));
}
