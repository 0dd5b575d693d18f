//! Pure statistics: medians with their range, trimmed means, percentiles and ratios that
//! refuse to divide by nothing. No kernel, no I/O.

use serde::{Deserialize, Serialize};

/// A figure measured several times: the median of the repetitions, with their range.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// How many repetitions (rounds) it summarises.
    pub n: usize,
}

impl Figure {
    /// The median, minimum and maximum of `samples`; `None` when there are none, or any is
    /// not a finite number.
    #[must_use]
    pub fn of(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() || samples.iter().any(|s| !s.is_finite()) {
            return None;
        }
        let sorted = sorted(samples);
        Some(Self {
            median: median_of_sorted(&sorted),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            n: sorted.len(),
        })
    }
}

fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
}

fn median_of_sorted(sorted: &[f64]) -> f64 {
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        f64::midpoint(sorted[mid - 1], sorted[mid])
    }
}

/// The mean of `samples` after dropping `trim` (a fraction, 0 ≤ trim < 0.5) of them at each
/// end: robust against the interrupts and migrations that hit single timed runs.
#[must_use]
pub fn trimmed_mean(samples: &[f64], trim: f64) -> Option<f64> {
    if samples.is_empty() || !(0.0..0.5).contains(&trim) {
        return None;
    }
    let sorted = sorted(samples);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a count times a fraction below one half, floored"
    )]
    let cut = (sorted.len() as f64 * trim).floor() as usize;
    let kept = &sorted[cut..sorted.len() - cut];
    #[expect(
        clippy::cast_precision_loss,
        reason = "sample counts are far below 2^52"
    )]
    let mean = kept.iter().sum::<f64>() / kept.len() as f64;
    Some(mean)
}

/// The nearest-rank `p`-th percentile (0 < p ≤ 100) of `samples`.
#[must_use]
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let sorted = sorted(samples);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a rank between 1 and the sample count"
    )]
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// `numerator / denominator`, or `None` when that means nothing: a zero, negative or
/// non-finite denominator, or a non-finite numerator.
#[must_use]
pub fn ratio(numerator: f64, denominator: f64) -> Option<f64> {
    (numerator.is_finite() && denominator.is_finite() && denominator > 0.0)
        .then(|| numerator / denominator)
}

/// Per-repetition ratios of two paired series (`a[i] / b[i]`), skipping pairs that have none.
#[must_use]
pub fn paired_ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).filter_map(|(x, y)| ratio(*x, *y)).collect()
}

/// Per-repetition differences of two paired series (`a[i] - b[i]`).
#[must_use]
pub fn paired_differences(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn median(samples: &[f64]) -> Option<f64> {
        Figure::of(samples).map(|f| f.median)
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn figures_carry_the_range() {
        let figure = Figure::of(&[26.0, 27.0, 25.0, 30.0, 26.0, 26.0, 24.0]).unwrap();
        assert_eq!(
            figure,
            Figure {
                median: 26.0,
                min: 24.0,
                max: 30.0,
                n: 7
            }
        );
    }

    #[test]
    fn trimmed_means_drop_the_outliers() {
        let mut samples = vec![100.0; 18];
        samples.push(10_000.0);
        samples.push(0.0);
        assert_eq!(trimmed_mean(&samples, 0.1), Some(100.0));
        assert_eq!(trimmed_mean(&samples, 0.0), Some(10_000.0 / 20.0 + 90.0));
        assert_eq!(trimmed_mean(&[], 0.1), None);
        assert_eq!(trimmed_mean(&[1.0], 0.5), None);
        // Too few samples to trim anything: the plain mean.
        assert_eq!(trimmed_mean(&[1.0, 2.0, 6.0], 0.1), Some(3.0));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 99.0), Some(99.0));
        assert_eq!(percentile(&samples, 50.0), Some(50.0));
        assert_eq!(percentile(&samples, 100.0), Some(100.0));
        assert_eq!(percentile(&[5.0], 99.0), Some(5.0));
        assert_eq!(percentile(&[], 99.0), None);
        assert_eq!(percentile(&samples, 0.0), None);
    }

    #[test]
    fn ratios_never_divide_by_nothing() {
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
        assert_eq!(ratio(3.0, 0.0), None);
        assert_eq!(ratio(3.0, -1.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
        assert_eq!(ratio(1.0, f64::INFINITY), None);
        assert_eq!(
            paired_ratios(&[2.0, 3.0, 4.0], &[1.0, 0.0, 2.0]),
            vec![2.0, 2.0]
        );
        assert_eq!(
            paired_differences(&[30.0, 31.0], &[26.0, 25.0]),
            vec![4.0, 6.0]
        );
    }
}
