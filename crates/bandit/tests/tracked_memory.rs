//! What a decision awaiting feedback costs in memory, measured by counting the bytes the
//! learner holds: the default feedback horizon must fit well under 200 MB per route with
//! the default featurizer's 64 features.
//!
//! This file holds one test, so that nothing else allocates while it counts.
#![allow(clippy::unwrap_used)] // a test that fails should panic

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use quiver_bandit::{Arm, Featurizer, HashingFeaturizer, Learner, LearnerConfig, Request};

/// The system allocator, keeping the sum of the bytes live.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap bytes per tracked decision, measured over `n` decisions on a route of `arms` arms.
fn bytes_per_tracked_decision(n: usize, arms: usize) -> f64 {
    let featurizer = HashingFeaturizer::default();
    let config = LearnerConfig::new("linucb".parse().unwrap(), featurizer.dim());
    let arms = (0..arms).map(|a| Arm::new(format!("model-{a}"))).collect();
    let mut learner = Learner::new(config, arms).unwrap();
    let requests: Vec<Request> = (0..64)
        .map(|i| {
            let prompt = format!("Question {i}: explain how a hash map resizes, with an example in Rust.");
            Request::new(featurizer.featurize(&prompt, &[]).unwrap())
        })
        .collect();
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    for i in 0..n {
        learner.decide(&requests[i % requests.len()]).unwrap();
    }
    let held = LIVE_BYTES.load(Ordering::Relaxed) - before;
    held as f64 / n as f64
}

#[test]
fn the_default_horizon_of_pending_decisions_fits_well_under_200_mb() {
    // Fewer decisions than the horizon, so that none is forgotten while counting.
    let per_decision = bytes_per_tracked_decision(50_000, 3);
    // The features (64 x 8 bytes behind a shared pointer) dominate; the map adds its
    // entries and nodes. The bound fails if a tracked decision grows by half.
    assert!(
        (530.0..900.0).contains(&per_decision),
        "{per_decision:.0} bytes per tracked decision"
    );
    let horizon = LearnerConfig::new("linucb".parse().unwrap(), 64).max_tracked_decisions;
    let total_mb = per_decision * horizon as f64 / 1e6;
    println!("{per_decision:.0} bytes per tracked decision; {horizon} of them: {total_mb:.0} MB");
    assert!(
        total_mb < 150.0,
        "the default horizon of {horizon} holds {total_mb:.0} MB"
    );
}
