//! Kubernetes' `resource.Quantity`: parsing and canonical printing exactly as
//! `k8s.io/apimachinery/pkg/api/resource` does them, so resource requests and
//! limits mean the same here and print the same as with `kubectl`.
//!
//! A value is kept exactly as a count of nano-units in an `i128` (Kubernetes
//! keeps nothing finer than `1n` either), with the [`Format`] it was written in,
//! which decides how it prints. Magnitudes above about 1.7e29 are rejected
//! rather than silently wrapped; Kubernetes' own quirks (rounding below `1n`
//! away from zero, capping binary-suffixed values at 2^63-1, ...) are kept.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The syntax Kubernetes' error message quotes (its scanner is hand-written).
pub const QUANTITY_REGEX: &str = "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$";

const NANOS_PER_UNIT: u128 = 1_000_000_000;
const NANOS_PER_MILLI: u128 = 1_000_000;
/// Kubernetes silently caps binary-suffixed quantities at `i64::MAX` ("8Ei").
const BINARY_SI_CAP_NANOS: u128 = i64::MAX as u128 * NANOS_PER_UNIT;
/// Largest magnitude representable, in nano-units.
const MAX_NANOS: u128 = i128::MAX as u128;

/// How a quantity was written, which is how it prints again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Format {
    /// `12e6`, `1e-3`: exponents of ten, printed as multiples of three.
    DecimalExponent,
    /// `12Mi`: powers of 1024.
    BinarySI,
    /// `12M`, `250m`, plain numbers.
    #[default]
    DecimalSI,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::DecimalExponent => "DecimalExponent",
            Format::BinarySI => "BinarySI",
            Format::DecimalSI => "DecimalSI",
        })
    }
}

/// Why a string is not a quantity; the messages are Kubernetes' own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not of the form number + suffix at all.
    #[error("quantities must match the regular expression '{}'", QUANTITY_REGEX)]
    FormatWrong,
    /// The number part has no digits where Kubernetes needs some (e.g. "Pi").
    #[error("unable to parse numeric part of quantity")]
    Numeric,
    /// Well formed, but the suffix is not one Kubernetes knows (e.g. "1K", "1Mii").
    #[error("unable to parse quantity's suffix")]
    Suffix,
    /// Beyond what orch represents (Kubernetes' own limit is higher).
    #[error(
        "quantity is too large: its magnitude may be at most {}n (about 1.7e29)",
        i128::MAX
    )]
    TooLarge,
}

/// An exact resource amount. Equality, hashing and ordering compare the value
/// only (like Go's `Cmp`/`Equal`): `1Gi == 1024Mi` and `1 == 1000m`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quantity {
    nanos: i128,
    format: Format,
}

impl Quantity {
    /// `value` whole units.
    pub fn new(value: i64, format: Format) -> Self {
        Self::from_nanos(i128::from(value) * NANOS_PER_UNIT as i128, format)
    }

    /// `milli` thousandths of a unit (CPU millicores, for example).
    pub fn from_milli(milli: i64, format: Format) -> Self {
        Self::from_nanos(i128::from(milli) * NANOS_PER_MILLI as i128, format)
    }

    /// `nanos` billionths of a unit; `i128::MIN` is raised by one so that every
    /// value can be negated and printed.
    pub fn from_nanos(nanos: i128, format: Format) -> Self {
        Self {
            nanos: nanos.max(-i128::MAX),
            format,
        }
    }

    /// The exact value in billionths of a unit.
    pub fn as_nanos(&self) -> i128 {
        self.nanos
    }

    /// The format the quantity prints in.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Whether the value is zero.
    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    /// Whole units, rounded away from zero like Go's `Value` ("1.1" -> 2,
    /// "-1.1" -> -2). Never overflows, unlike Go's `int64`.
    pub fn value(&self) -> i128 {
        div_away_from_zero(self.nanos, NANOS_PER_UNIT)
    }

    /// Thousandths, rounded away from zero like Go's `MilliValue`.
    pub fn milli_value(&self) -> i128 {
        div_away_from_zero(self.nanos, NANOS_PER_MILLI)
    }

    /// Kubernetes' canonical string, as `kubectl get -o yaml` prints it.
    pub fn canonical(&self) -> String {
        self.to_string()
    }
}

fn div_away_from_zero(nanos: i128, unit: u128) -> i128 {
    let mag = nanos.unsigned_abs();
    let whole = mag / unit + u128::from(!mag.is_multiple_of(unit));
    // `whole <= mag <= i128::MAX`, so the conversion cannot fail.
    let whole = i128::try_from(whole).unwrap_or(i128::MAX);
    if nanos < 0 { -whole } else { whole }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}

impl Eq for Quantity {}

impl Hash for Quantity {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.nanos.hash(state);
    }
}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

/// The pieces of a quantity string, as Go's `parseQuantityString` splits them.
struct Scanned<'a> {
    negative: bool,
    /// Integer digits, leading zeros removed.
    num: &'a [u8],
    /// Fraction digits.
    denom: &'a [u8],
    suffix: &'a [u8],
    /// Whether the number part has any digit (Go's slow path needs one).
    has_digits: bool,
}

fn is_suffix_char(b: u8) -> bool {
    b"eEinumkKMGTP".contains(&b)
}

fn scan(s: &[u8]) -> Result<Scanned<'_>, QuantityError> {
    let end = s.len();
    let mut pos = 0;
    let mut negative = false;
    match s.first() {
        Some(b'-') => {
            negative = true;
            pos += 1;
        }
        Some(b'+') => pos += 1,
        _ => {}
    }
    let zeros_start = pos;
    while pos < end && s[pos] == b'0' {
        pos += 1;
    }
    let mut out = Scanned {
        negative,
        num: &[],
        denom: &[],
        suffix: &[],
        // A bare sign ("-") counts as the digit "0", as in Go.
        has_digits: true,
    };
    if pos == end {
        return Ok(out);
    }
    let stripped_zeros = pos > zeros_start;
    let num_start = pos;
    while pos < end && s[pos].is_ascii_digit() {
        pos += 1;
    }
    out.num = &s[num_start..pos];
    if pos < end && s[pos] == b'.' {
        pos += 1;
        let denom_start = pos;
        while pos < end && s[pos].is_ascii_digit() {
            pos += 1;
        }
        out.denom = &s[denom_start..pos];
    }
    out.has_digits = stripped_zeros || !out.num.is_empty() || !out.denom.is_empty();
    let suffix_start = pos;
    while pos < end && is_suffix_char(s[pos]) {
        pos += 1;
    }
    if pos < end && (s[pos] == b'-' || s[pos] == b'+') {
        pos += 1;
    }
    while pos < end && s[pos].is_ascii_digit() {
        pos += 1;
    }
    if pos < end {
        return Err(QuantityError::FormatWrong);
    }
    out.suffix = &s[suffix_start..];
    Ok(out)
}

/// Suffix -> (is base 2, exponent, format), as Go's `quantitySuffixer.interpret`.
fn interpret(suffix: &[u8]) -> Option<(bool, i64, Format)> {
    let dec = |e| Some((false, e, Format::DecimalSI));
    let bin = |e| Some((true, e, Format::BinarySI));
    match suffix {
        b"" => dec(0),
        b"n" => dec(-9),
        b"u" => dec(-6),
        b"m" => dec(-3),
        b"k" => dec(3),
        b"M" => dec(6),
        b"G" => dec(9),
        b"T" => dec(12),
        b"P" => dec(15),
        b"E" => dec(18),
        b"Ki" => bin(10),
        b"Mi" => bin(20),
        b"Gi" => bin(30),
        b"Ti" => bin(40),
        b"Pi" => bin(50),
        b"Ei" => bin(60),
        [b'e' | b'E', rest @ ..] if !rest.is_empty() => {
            let exp = std::str::from_utf8(rest).ok()?.parse::<i64>().ok()?;
            Some((false, exp, Format::DecimalExponent))
        }
        _ => None,
    }
}

/// Parses `digits` (decimal, most significant first) into a u128, if it fits.
fn digits_to_u128(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u128::from(d))
    })
}

/// The magnitude `digits * 2^shift * 10^exp10` in nano-units, rounded away
/// from zero; `None` if it does not fit a u128.
fn magnitude_nanos(digits: &[u8], shift: u32, exp10: i128) -> Option<u128> {
    // Multiply by 2^shift digit by digit; `shift <= 60` keeps this within u128.
    let mut little: Vec<u8> = digits.iter().rev().copied().collect();
    if shift > 0 {
        let factor = 1u128 << shift;
        let mut carry = 0u128;
        for d in &mut little {
            let v = u128::from(*d) * factor + carry;
            *d = (v % 10) as u8;
            carry = v / 10;
        }
        while carry > 0 {
            little.push((carry % 10) as u8);
            carry /= 10;
        }
    }
    let exp = exp10 + 9;
    if exp >= 0 {
        // 10^39 exceeds u128::MAX, so anything longer overflows.
        if little.len() as i128 + exp > 39 {
            return None;
        }
        let big: Vec<u8> = little.iter().rev().copied().collect();
        let scale = 10u128.checked_pow(u32::try_from(exp).ok()?)?;
        digits_to_u128(&big)?.checked_mul(scale)
    } else {
        let drop = usize::try_from(-exp)
            .unwrap_or(usize::MAX)
            .min(little.len());
        let fraction_nonzero = little[..drop].iter().any(|&d| d != 0);
        let whole: Vec<u8> = little[drop..].iter().rev().copied().collect();
        digits_to_u128(&whole)?.checked_add(u128::from(fraction_nonzero))
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(QuantityError::FormatWrong);
        }
        if s == "0" {
            return Ok(Self::default());
        }
        let scanned = scan(s.as_bytes())?;
        let (binary, exponent, mut format) =
            interpret(scanned.suffix).ok_or(QuantityError::Suffix)?;
        if !scanned.has_digits {
            // Go's fast path takes a digitless number as 0; its slow path
            // (tiny scales, "Pi" and "Ei") fails to parse it.
            let slow = if binary {
                exponent >= 50
            } else {
                exponent < -9
            };
            if slow {
                return Err(QuantityError::Numeric);
            }
            return Ok(Self { nanos: 0, format });
        }

        let mut digits: Vec<u8> = scanned
            .num
            .iter()
            .chain(scanned.denom)
            .map(|b| b - b'0')
            .collect();
        let mut exp10 = -(scanned.denom.len() as i128);
        if !binary {
            exp10 += i128::from(exponent);
        }
        while digits.last() == Some(&0) {
            digits.pop();
            exp10 += 1;
        }
        let first = digits.iter().position(|&d| d != 0).unwrap_or(digits.len());
        let digits = &digits[first..];
        let mut mag = if digits.is_empty() {
            Some(0)
        } else {
            // Binary exponents only come from the suffix table (10..=60).
            let shift = if binary {
                u32::try_from(exponent).unwrap_or(0)
            } else {
                0
            };
            magnitude_nanos(digits, shift, exp10)
        };
        if format == Format::BinarySI && mag.is_none_or(|m| m > BINARY_SI_CAP_NANOS) {
            mag = Some(BINARY_SI_CAP_NANOS);
        }
        let mag = mag
            .filter(|&m| m <= MAX_NANOS)
            .ok_or(QuantityError::TooLarge)?;
        if format == Format::BinarySI && mag > 0 && mag < NANOS_PER_UNIT {
            format = Format::DecimalSI;
        }
        let nanos = i128::try_from(mag).map_err(|_| QuantityError::TooLarge)?;
        Ok(Self {
            nanos: if scanned.negative { -nanos } else { nanos },
            format,
        })
    }
}

const DECIMAL_SUFFIXES: [(i32, &str); 10] = [
    (-9, "n"),
    (-6, "u"),
    (-3, "m"),
    (0, ""),
    (3, "k"),
    (6, "M"),
    (9, "G"),
    (12, "T"),
    (15, "P"),
    (18, "E"),
];
const BINARY_SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

impl fmt::Display for Quantity {
    /// Go's `CanonicalizeBytes`: no fraction, the largest exponent (a multiple
    /// of three, or of 1024) that keeps the value exact.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            return f.write_str("0");
        }
        let sign = if self.nanos < 0 { "-" } else { "" };
        let mag = self.nanos.unsigned_abs();
        let mut format = self.format;
        if format == Format::BinarySI
            && (mag < 1024 * NANOS_PER_UNIT || !mag.is_multiple_of(NANOS_PER_UNIT))
        {
            // Small or fractional binary values would lose precision.
            format = Format::DecimalSI;
        }
        if format == Format::BinarySI {
            let mut mantissa = mag / NANOS_PER_UNIT;
            let mut exp = 0usize;
            while mantissa >= 1024 && mantissa.is_multiple_of(1024) {
                mantissa /= 1024;
                exp += 1;
            }
            // Past "Ei" there is no suffix: stay exact with a larger mantissa.
            while exp >= BINARY_SUFFIXES.len() {
                mantissa *= 1024;
                exp -= 1;
            }
            let suffix = BINARY_SUFFIXES.get(exp).copied().unwrap_or_default();
            return write!(f, "{sign}{mantissa}{suffix}");
        }
        let mut mantissa = mag;
        let mut exp: i32 = -9;
        while mantissa >= 10 && mantissa.is_multiple_of(10) {
            mantissa /= 10;
            exp += 1;
        }
        let down = exp.rem_euclid(3);
        // Only factors of ten removed above are put back, so no overflow.
        mantissa *= 10u128.pow(down.unsigned_abs());
        exp -= down;
        let si = DECIMAL_SUFFIXES.iter().find(|(e, _)| *e == exp);
        match (format, si) {
            (Format::DecimalSI, Some((_, suffix))) => write!(f, "{sign}{mantissa}{suffix}"),
            // Beyond "E" DecimalSI has no suffix; Kubernetes falls back to "e".
            _ if exp == 0 => write!(f, "{sign}{mantissa}"),
            _ => write!(f, "{sign}{mantissa}e{exp}"),
        }
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    /// A string (surrounding whitespace ignored, as Go's `UnmarshalJSON`
    /// does) or a bare number, which Kubernetes also accepts.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct QuantityVisitor;

        fn parse<E: de::Error>(s: &str) -> Result<Quantity, E> {
            s.trim()
                .parse()
                .map_err(|e| E::custom(format!("invalid quantity {s:?}: {e}")))
        }

        impl Visitor<'_> for QuantityVisitor {
            type Value = Quantity;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quantity such as \"250m\" or \"128Mi\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
                parse(v)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
                parse(&v.to_string())
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
                parse(&v.to_string())
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
                parse(&v.to_string())
            }
        }

        deserializer.deserialize_any(QuantityVisitor)
    }
}

/// Parses the quantity string held by `k8s-openapi`'s type (which keeps the
/// raw text), trimming whitespace as the API server does.
pub fn parse_k8s(q: &K8sQuantity) -> Result<Quantity, QuantityError> {
    q.0.trim().parse()
}

impl TryFrom<&K8sQuantity> for Quantity {
    type Error = QuantityError;

    fn try_from(q: &K8sQuantity) -> Result<Self, Self::Error> {
        parse_k8s(q)
    }
}

impl From<Quantity> for K8sQuantity {
    fn from(q: Quantity) -> Self {
        K8sQuantity(q.to_string())
    }
}

#[cfg(test)]
mod tests;
