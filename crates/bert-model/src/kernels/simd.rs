//! The scalar math of the kernels, written so that the loops calling it vectorise: `exp` and
//! `erf` as polynomials (no libm call), exact GELU and its derivative, reductions over 8
//! interleaved accumulators in a fixed order (results do not depend on the SIMD width), and
//! SplitMix64 for the dropout masks.

/// `exp(x)` in f32 without a libm call, so loops over it vectorise: `x = n ln 2 + r`,
/// `|r| ≤ ln 2 / 2`, a degree-7 Taylor polynomial for `exp(r)` (relative error < 1e-7 before
/// rounding), `2ⁿ` through the exponent bits. 0 below -87.3, and the input clamped above 88.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n·LN2_HI is exact for |n| < 2⁸ (Cody and Waite).
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 · 2²³: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.3, 88.0);
    let n = (xc * LOG2_E + ROUND) - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.3 { 0.0 } else { p * scale }
}

/// Folds `x` with `op` over 8 interleaved accumulators, then folds those in order: the
/// accumulators vectorise (a chain of dependent scalar adds or maxes would cost more than
/// the products of a score row), and the order is fixed, so the result does not depend
/// on the SIMD width.
#[inline(always)]
pub(crate) fn lanes(x: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    fold_lanes(x, init, |v| v, op)
}

/// [`lanes`] over `map(x[i])`.
#[inline(always)]
pub(crate) fn fold_lanes(
    x: &[f32],
    init: f32,
    map: impl Fn(f32) -> f32,
    op: impl Fn(f32, f32) -> f32,
) -> f32 {
    let mut acc = [init; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = op(*a, map(*v));
        }
    }
    let mut out = rest.iter().fold(init, |a, &v| op(a, map(v)));
    for a in acc {
        out = op(out, a);
    }
    out
}

/// Exact GELU, `x Φ(x) = x (1 + erf(x / √2)) / 2` (see [`normal_cdf_f32`]).
#[inline(always)]
pub(crate) fn gelu_f32(x: f32) -> f32 {
    x * normal_cdf_f32(x)
}

/// The standard normal CDF `Φ(x) = (1 + erf(x / √2)) / 2`, with `erf` from Abramowitz and
/// Stegun 7.1.26 (absolute error ≤ 1.5e-7): `1 - erf(z) = t (a₁ + t (a₂ + …)) e^{-z²}`,
/// `t = 1 / (1 + p z)`. The tail `1 - erf` is used directly for negative `x`, so the result
/// keeps its relative precision far into the negative tail.
#[inline(always)]
pub(crate) fn normal_cdf_f32(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152_1,
        1.061_405_4,
    ];
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + P * z);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    // erfc(z) / 2 = (1 - erf(|x| / √2)) / 2 = Φ(-|x|).
    let tail = 0.5 * poly * exp_f32(-z * z);
    if x < 0.0 { tail } else { 1.0 - tail }
}

/// `Σ a[i] b[i]` over 8 interleaved accumulators (see [`lanes`]).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let rest: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((acc, x), y) in acc.iter_mut().zip(x).zip(y) {
            *acc += x * y;
        }
    }
    acc.iter().fold(rest, |s, a| s + a)
}

/// `d/dx [x Φ(x)] = Φ(x) + x φ(x)`, with `Φ` from [`gelu_f32`]'s `erf` (`Φ(x) = gelu(x) / x`
/// is not usable at 0, so it is recomputed here the same way).
#[inline(always)]
pub(crate) fn gelu_derivative_f32(x: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let pdf = INV_SQRT_2PI * exp_f32(-0.5 * x * x);
    normal_cdf_f32(x) + x * pdf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_follows_libm() {
        let mut worst = 0f32;
        for i in -100_000..=100_000 {
            let x = i as f32 * 8.7e-4;
            let (got, want) = (exp_f32(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3e-7, "max relative error {worst}");
        assert_eq!(exp_f32(-1e30), 0.0);
        assert_eq!(exp_f32(f32::MIN), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
    }

    #[test]
    fn gelu_follows_the_erf_definition() {
        let exact = |x: f64| 0.5 * x * (1.0 + erf_f64(x / std::f64::consts::SQRT_2));
        let mut worst = 0f64;
        for i in -200_000..=200_000 {
            let x = i as f32 * 1e-4;
            let err = (gelu_f32(x) as f64 - exact(x as f64)).abs() / (x as f64).abs().max(1.0);
            worst = worst.max(err);
        }
        assert!(worst < 2e-7, "max error {worst}");
        assert_eq!(gelu_f32(0.0), 0.0);
        assert_eq!(gelu_f32(-30.0), 0.0);
        assert_eq!(gelu_f32(30.0), 30.0);
    }

    /// erf to double precision (series for |x| < 3, continued fraction beyond): the reference.
    fn erf_f64(x: f64) -> f64 {
        let a = x.abs();
        let value = if a < 3.0 {
            // erf(x) = 2/√π Σ (-1)ⁿ x^(2n+1) / (n! (2n+1))
            let (mut term, mut sum, mut n) = (a, a, 0.0);
            while term.abs() > 1e-17 * sum.abs() {
                n += 1.0;
                term *= -a * a / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc(x) = e^{-x²}/√π · 1/(x + 1/2/(x + 1/(x + 3/2/(x + …))))
            let mut f = a;
            for k in (1..60).rev() {
                f = a + (k as f64 / 2.0) / f;
            }
            1.0 - (-a * a).exp() / (std::f64::consts::PI.sqrt() * f)
        };
        value.copysign(x)
    }
}
