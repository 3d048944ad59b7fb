//! The capacity search: step up a ladder of session counts until one fails, then bisect between
//! the last count that passed and the first that failed, for a bounded number of steps. The
//! search only proposes counts and takes verdicts, so it is tested without running anything.

use serde::Serialize;

/// Bisection stops once the bracket is this narrow, relative to its upper end (5 %) …
const RESOLUTION_DIV: usize = 20;
/// … or this narrow in sessions.
const RESOLUTION_MIN: usize = 10;

/// A search in progress: `next` proposes a count, `record` takes its verdict.
#[derive(Debug, Clone)]
pub struct Search {
    ladder: Vec<usize>,
    rung: usize,
    bisections_left: usize,
    passed: Option<usize>,
    failed: Option<usize>,
}

/// What a search found: the largest count that passed and the smallest that failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Found {
    pub passed: Option<usize>,
    pub failed: Option<usize>,
}

impl Found {
    /// As printed: `620` (with the failing count beside it), `≥ 4000` when nothing failed,
    /// `< 100` when nothing passed.
    pub fn label(&self) -> String {
        match (self.passed, self.failed) {
            (Some(p), Some(f)) => format!("{p} (fails at {f})"),
            (Some(p), None) => format!("≥ {p} (none failed)"),
            (None, Some(f)) => format!("< {f}"),
            (None, None) => "not measured".into(),
        }
    }
}

impl Search {
    /// A search over `ladder` (sorted here; zeros and repeats dropped) with at most `bisections`
    /// steps after the first failure.
    pub fn new(mut ladder: Vec<usize>, bisections: usize) -> Self {
        ladder.retain(|&n| n > 0);
        ladder.sort_unstable();
        ladder.dedup();
        Self { ladder, rung: 0, bisections_left: bisections, passed: None, failed: None }
    }

    /// The next count to run, or `None` when the search is over.
    pub fn next(&self) -> Option<usize> {
        let Some(hi) = self.failed else { return self.ladder.get(self.rung).copied() };
        if self.bisections_left == 0 {
            return None;
        }
        let lo = self.passed.unwrap_or(0);
        let gap = hi.saturating_sub(lo);
        if gap <= RESOLUTION_MIN.max(hi / RESOLUTION_DIV) {
            return None;
        }
        // Round counts: a multiple of 10 when the bracket is wide.
        let step = if gap >= 100 { 10 } else { 1 };
        let mid = (lo + hi) / 2 / step * step;
        (mid > lo && mid < hi).then_some(mid)
    }

    /// Records the verdict on `n` (the count `next` proposed).
    pub fn record(&mut self, n: usize, pass: bool) {
        if self.failed.is_some() {
            self.bisections_left = self.bisections_left.saturating_sub(1);
        } else {
            self.rung += 1;
        }
        if pass {
            self.passed = Some(self.passed.map_or(n, |p| p.max(n)));
        } else {
            self.failed = Some(self.failed.map_or(n, |f| f.min(n)));
        }
    }

    pub fn found(&self) -> Found {
        Found { passed: self.passed, failed: self.failed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search against `pass`, returning every (count, verdict) it asked for.
    fn drive(mut s: Search, pass: impl Fn(usize) -> bool) -> (Vec<(usize, bool)>, Found) {
        let mut steps = Vec::new();
        while let Some(n) = s.next() {
            assert!(steps.len() < 100, "the search does not end: {steps:?}");
            let ok = pass(n);
            s.record(n, ok);
            steps.push((n, ok));
        }
        (steps, s.found())
    }

    const LADDER: [usize; 6] = [250, 500, 750, 1000, 1500, 2000];

    #[test]
    fn climbs_the_ladder_then_bisects_within_its_budget() {
        let (steps, found) = drive(Search::new(LADDER.to_vec(), 3), |n| n <= 640);
        assert_eq!(steps, vec![(250, true), (500, true), (750, false), (620, true), (680, false), (650, false)]);
        assert_eq!(found, Found { passed: Some(620), failed: Some(650) });
        assert_eq!(found.label(), "620 (fails at 650)");
    }

    #[test]
    fn stops_bisecting_once_the_bracket_is_narrow() {
        let (steps, found) = drive(Search::new(LADDER.to_vec(), 10), |n| n <= 640);
        // 620 … 650 is 30 apart, within 5 % of 650: the search ends with budget left.
        assert_eq!(steps.len(), 6, "{steps:?}");
        assert_eq!(found, Found { passed: Some(620), failed: Some(650) });
        // A bracket of 10 or less is never split, however small the counts.
        let (steps, found) = drive(Search::new(vec![8, 16], 10), |n| n <= 12);
        assert_eq!(steps, vec![(8, true), (16, false)]);
        assert_eq!(found, Found { passed: Some(8), failed: Some(16) });
    }

    #[test]
    fn everything_passing_ends_at_the_top_of_the_ladder() {
        let (steps, found) = drive(Search::new(LADDER.to_vec(), 3), |_| true);
        assert_eq!(steps.iter().map(|s| s.0).collect::<Vec<_>>(), LADDER.to_vec());
        assert_eq!(found, Found { passed: Some(2000), failed: None });
        assert_eq!(found.label(), "≥ 2000 (none failed)");
    }

    #[test]
    fn a_failing_first_rung_bisects_down_from_it() {
        let (steps, found) = drive(Search::new(LADDER.to_vec(), 2), |n| n <= 100);
        assert_eq!(steps, vec![(250, false), (120, false), (60, true)]);
        assert_eq!(found, Found { passed: Some(60), failed: Some(120) });
        let (_, none) = drive(Search::new(vec![50], 0), |_| false);
        assert_eq!(none.label(), "< 50");
    }

    #[test]
    fn no_bisection_budget_stops_at_the_first_failure() {
        let (steps, found) = drive(Search::new(LADDER.to_vec(), 0), |n| n < 1000);
        assert_eq!(steps.last(), Some(&(1000, false)));
        assert_eq!(found, Found { passed: Some(750), failed: Some(1000) });
    }

    #[test]
    fn the_ladder_is_sorted_and_deduplicated() {
        let (steps, _) = drive(Search::new(vec![500, 0, 100, 500, 250], 0), |_| true);
        assert_eq!(steps.iter().map(|s| s.0).collect::<Vec<_>>(), vec![100, 250, 500]);
    }
}
