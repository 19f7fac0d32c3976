//! The hull: the best a fixed random mix of at most two single models reaches at a given
//! mean cost, the bar a router must clear for learning to pay. Replays report every
//! policy's lift over it; a route's shadow candidates are shown beside it.

/// The upper-left frontier of (cost, quality) points: the non-decreasing concave hull,
/// sorted by cost. A point is on it if no mix of two others is cheaper and better.
pub fn frontier(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut sorted: Vec<(f64, f64)> = points.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
    // Keep only points that improve quality as cost grows.
    let mut rising: Vec<(f64, f64)> = Vec::new();
    for p in sorted {
        if rising.last().is_none_or(|last| p.1 > last.1) {
            rising.push(p);
        }
    }
    // Upper concave hull (monotone chain).
    let mut hull: Vec<(f64, f64)> = Vec::new();
    for p in rising {
        while hull.len() >= 2 {
            let (a, b) = (hull[hull.len() - 2], hull[hull.len() - 1]);
            let (left, right) = ((b.0 - a.0) * (p.1 - a.1), (b.1 - a.1) * (p.0 - a.0));
            // b lies strictly below the chord a-p: drop it (collinear points stay).
            if left - right > 1e-12 * (left.abs() + right.abs()) {
                hull.pop();
            } else {
                break;
            }
        }
        hull.push(p);
    }
    hull
}

/// The hull's quality at mean cost `cost`: the best mean quality a fixed random mix of at
/// most two single models reaches at that cost, read off `frontier` (see [`frontier`]) by
/// linear interpolation: mixing models a and b with shares 1 - t and t costs and earns the
/// same mix of their means. Past the costliest point it stays at that point's quality
/// (spending more buys nothing); before the cheapest it is the cheapest point's quality,
/// the least any single-model choice gets. The bar a router must clear for learning to pay.
pub fn frontier_quality_at(frontier: &[(f64, f64)], cost: f64) -> f64 {
    let Some(first) = frontier.first() else {
        return f64::NAN;
    };
    if cost <= first.0 {
        return first.1;
    }
    for w in frontier.windows(2) {
        if cost <= w[1].0 {
            let t = (cost - w[0].0) / (w[1].0 - w[0].0);
            return w[0].1 + t * (w[1].1 - w[0].1);
        }
    }
    frontier[frontier.len() - 1].1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontier_drops_dominated_and_non_concave_points() {
        let points = [(1.0, 0.5), (2.0, 0.55), (3.0, 0.9), (4.0, 0.8), (0.5, 0.4)];
        // (2, 0.55) lies below the chord from (1, 0.5) to (3, 0.9); (4, 0.8) is dominated;
        // (1, 0.5) is on the chord from (0.5, 0.4) to (3, 0.9) and stays.
        assert_eq!(frontier(&points), vec![(0.5, 0.4), (1.0, 0.5), (3.0, 0.9)]);
    }

    #[test]
    fn the_hull_is_the_best_mix_of_at_most_two_models_at_the_cost() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..200 {
            let models: Vec<(f64, f64)> = (0..rng.random_range(1..7))
                .map(|_| (rng.random_range(0.1..5.0), rng.random_range(0.0..1.0)))
                .collect();
            let hull = frontier(&models);
            let cheapest = models.iter().map(|m| m.0).fold(f64::INFINITY, f64::min);
            for step in 0..=50 {
                let cost = cheapest + step as f64 * 0.1;
                let mut best = models
                    .iter()
                    .filter(|m| m.0 <= cost)
                    .map(|m| m.1)
                    .fold(f64::NEG_INFINITY, f64::max);
                for a in &models {
                    for b in &models {
                        if a.0 < cost && cost < b.0 {
                            let t = (cost - a.0) / (b.0 - a.0);
                            best = best.max((1.0 - t) * a.1 + t * b.1);
                        }
                    }
                }
                let at = frontier_quality_at(&hull, cost);
                assert!((at - best).abs() < 1e-9, "{models:?} at {cost}: {at} vs {best}");
            }
        }
    }
}
