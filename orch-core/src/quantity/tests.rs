use super::*;
use proptest::prelude::*;

fn parse(s: &str) -> Quantity {
    match s.parse::<Quantity>() {
        Ok(q) => q,
        Err(e) => panic!("{s:?} should parse: {e}"),
    }
}

fn canon(s: &str) -> String {
    parse(s).to_string()
}

/// (input, canonical) pairs; most from apimachinery's quantity_test.go.
const CANONICAL: &[(&str, &str)] = &[
    ("0", "0"),
    ("0n", "0"),
    ("0u", "0"),
    ("0m", "0"),
    ("0Ki", "0"),
    ("0k", "0"),
    ("0Mi", "0"),
    ("0Ti", "0"),
    ("-0", "0"),
    ("+0.000", "0"),
    ("000", "0"),
    ("1", "1"),
    ("+1", "1"),
    ("-1", "-1"),
    ("1Ki", "1Ki"),
    ("8Ki", "8Ki"),
    ("7Mi", "7Mi"),
    ("6Gi", "6Gi"),
    ("5Ti", "5Ti"),
    ("4Pi", "4Pi"),
    ("3Ei", "3Ei"),
    ("10Ti", "10Ti"),
    ("100Ti", "100Ti"),
    ("5n", "5n"),
    ("4u", "4u"),
    ("3m", "3m"),
    ("9", "9"),
    ("8k", "8k"),
    ("50k", "50k"),
    ("7M", "7M"),
    ("6G", "6G"),
    ("5T", "5T"),
    ("40T", "40T"),
    ("300T", "300T"),
    ("2P", "2P"),
    ("1E", "1E"),
    ("12E", "12E"),
    ("1E-3", "1e-3"),
    ("1e3", "1e3"),
    ("1E6", "1e6"),
    ("1e9", "1e9"),
    ("1E12", "1e12"),
    ("1e15", "1e15"),
    ("1E18", "1e18"),
    ("1e14", "100e12"),
    ("1e13", "10e12"),
    ("1e-9", "1e-9"),
    ("1000e-12", "1e-9"),
    (".001e12", "1e9"),
    ("0.001e0", "1e-3"),
    ("00", "0"),
    ("100.035k", "100035"),
    ("0.001", "1m"),
    ("0.0005k", "500m"),
    ("0.005", "5m"),
    ("0.05", "50m"),
    ("0.5", "500m"),
    ("0.00050k", "500m"),
    ("0.00500", "5m"),
    ("0.50000", "500m"),
    ("0.5e0", "500e-3"),
    ("0.5e-1", "50e-3"),
    ("0.5e-2", "5e-3"),
    ("10.035M", "10035k"),
    ("1.2e3", "1200"),
    ("1.3E+6", "1300e3"),
    ("1.40e9", "1400e6"),
    ("1.53E12", "1530e9"),
    ("1.6e15", "1600e12"),
    ("1.7E18", "1700e15"),
    ("9.01", "9010m"),
    ("8.1k", "8100"),
    ("7.123456M", "7123456"),
    ("6.987654321G", "6987654321"),
    ("5.444T", "5444G"),
    ("40.1T", "40100G"),
    ("300.2T", "300200G"),
    ("2.5P", "2500T"),
    ("1.01E", "1010P"),
    // Below 1n rounds away from zero.
    ("3.001n", "4n"),
    ("1.1E-9", "2e-9"),
    ("0.0000000001", "1n"),
    ("0.0000000005", "1n"),
    ("0.5e-9", "1e-9"),
    ("0.9n", "1n"),
    ("0.1n", "1n"),
    ("-0.1n", "-1n"),
    ("0.00000012345", "124n"),
    ("0.00000012354", "124n"),
    ("1e-100", "1e-9"),
    (
        "0.000000000000000000000000000000000000000000000000001",
        "1n",
    ),
    // Binary values are capped at 2^63-1.
    ("9Ei", "9223372036854775807"),
    ("8Ei", "9223372036854775807"),
    ("-9Ei", "-9223372036854775807"),
    ("9223372036854775807Ki", "9223372036854775807"),
    (
        "99999999999999999999999999999999999999999Ki",
        "9223372036854775807",
    ),
    ("7Ei", "7Ei"),
    // Fractional or small binary values print as decimal.
    ("100.035Ki", "102435840m"),
    ("0.5Mi", "512Ki"),
    ("0.05Gi", "53687091200m"),
    ("0.025Ti", "27487790694400m"),
    ("0.000000000001Ki", "2n"),
    ("-0.000000000001Ki", "-2n"),
    (".001Ki", "1024m"),
    (".000001Ki", "1024u"),
    (".000000001Ki", "1024n"),
    ("1.1Ki", "1126400m"),
    ("0.5Ki", "512"),
    ("1023Ki", "1023Ki"),
    ("1025Ki", "1025Ki"),
    ("1000Ki", "1000Ki"),
    ("1024Ki", "1Mi"),
    (".001", "1m"),
    (".0001k", "100m"),
    ("1.", "1"),
    ("5.", "5"),
    (".5", "500m"),
    ("1.G", "1G"),
    // The brief's examples.
    ("1.5", "1500m"),
    ("1.5Gi", "1536Mi"),
    ("-1.5Gi", "-1536Mi"),
    ("0.5Gi", "512Mi"),
    ("1024Mi", "1Gi"),
    ("-1024Mi", "-1Gi"),
    ("1000m", "1"),
    ("1000", "1k"),
    ("1200", "1200"),
    ("250m", "250m"),
    ("128Mi", "128Mi"),
    ("1G", "1G"),
    ("1000M", "1G"),
    ("100u", "100u"),
    ("10n", "10n"),
    ("1e-3", "1e-3"),
    ("1Gi", "1Gi"),
    // DecimalSI has no suffix past E; Kubernetes falls back to exponents.
    ("1000E", "1e21"),
    ("1e29", "100e27"),
    // Go quirks: a number without digits is 0 where Go's fast path runs.
    ("-", "0"),
    ("+", "0"),
    (".", "0"),
    ("Ki", "0"),
    ("m", "0"),
    ("e3", "0"),
    ("-.k", "0"),
];

#[test]
fn canonical_table() {
    for (input, expected) in CANONICAL {
        assert_eq!(canon(input), *expected, "input {input:?}");
        // Canonical output is a fixed point.
        assert_eq!(canon(expected), *expected, "reparsing {expected:?}");
        // Negation prints with a sign (Kubernetes never prints "-0").
        if !expected.starts_with('-') && !input.starts_with(['-', '+']) {
            let neg = canon(&format!("-{input}"));
            let want = if *expected == "0" {
                "0".to_owned()
            } else {
                format!("-{expected}")
            };
            assert_eq!(neg, want, "input -{input}");
        }
    }
}

#[test]
fn formats_and_values() {
    assert_eq!(parse("1Ki").format(), Format::BinarySI);
    assert_eq!(parse("1k").format(), Format::DecimalSI);
    assert_eq!(parse("1e3").format(), Format::DecimalExponent);
    assert_eq!(parse("1E").format(), Format::DecimalSI);
    assert_eq!(parse("0").format(), Format::DecimalSI);
    assert_eq!(parse("0Ki").format(), Format::BinarySI);
    // Below one, a binary value becomes decimal (Go does this on parse).
    assert_eq!(parse("0.000000000001Ki").format(), Format::DecimalSI);
    assert_eq!(parse("0.5Mi").format(), Format::BinarySI);

    assert_eq!(parse("1Ki").as_nanos(), 1024 * 1_000_000_000);
    assert_eq!(parse("250m").as_nanos(), 250_000_000);
    assert_eq!(parse("1Ki"), parse("1024"));
    assert_eq!(parse("1"), parse("1000m"));
    assert!(parse("1Gi") > parse("1G"));
    assert!(parse("-1") < parse("1n"));

    assert_eq!(parse("250m").milli_value(), 250);
    assert_eq!(parse("1.5").value(), 2);
    assert_eq!(parse("-1.5").value(), -2);
    assert_eq!(parse("1n").milli_value(), 1);
    assert_eq!(parse("-1n").milli_value(), -1);
    assert_eq!(parse("2").milli_value(), 2000);
    assert_eq!(parse("128Mi").value(), 128 * 1024 * 1024);
    assert_eq!(parse("0").value(), 0);
    assert_eq!(parse("9.01").value(), 10);
    assert_eq!(parse("-9.01").value(), -10);

    assert_eq!(Quantity::new(5, Format::BinarySI).to_string(), "5");
    assert_eq!(Quantity::new(1 << 30, Format::BinarySI).to_string(), "1Gi");
    assert_eq!(
        Quantity::from_milli(500, Format::BinarySI).to_string(),
        "500m"
    );
    assert_eq!(
        Quantity::from_milli(1080, Format::DecimalSI).to_string(),
        "1080m"
    );
    assert_eq!(
        Quantity::new(3000, Format::DecimalExponent).to_string(),
        "3e3"
    );
    assert_eq!(Quantity::new(1025, Format::BinarySI).to_string(), "1025");
    // Past Ei the mantissa grows instead of the suffix.
    let huge = Quantity::from_nanos(1_000_000_000 << 70, Format::BinarySI);
    assert_eq!(huge.to_string(), "1024Ei");
    let min = Quantity::from_nanos(i128::MIN, Format::DecimalSI);
    assert_eq!(min.as_nanos(), -i128::MAX);
    assert_eq!(parse(&min.to_string()), min);
    assert_eq!(parse("1.5Gi").canonical(), "1536Mi");
}

#[test]
fn invalid_inputs() {
    use QuantityError::*;
    let cases: &[(&str, QuantityError)] = &[
        ("", FormatWrong),
        ("12Qi", FormatWrong),
        ("abc", FormatWrong),
        ("aoeu", FormatWrong),
        ("1.2.3", FormatWrong),
        ("1.1.M", FormatWrong),
        ("1+1.0M", FormatWrong),
        ("0.1am", FormatWrong),
        (" 1", FormatWrong),
        ("1 ", FormatWrong),
        ("1e3.5", FormatWrong),
        ("1µ", FormatWrong),
        ("1Mii", Suffix),
        ("--1", Suffix),
        ("+-1", Suffix),
        ("1K", Suffix),
        ("0.1mi", Suffix),
        (".5i", Suffix),
        ("1i", Suffix),
        ("-3.01i", Suffix),
        ("-3.01e-", Suffix),
        ("1e", Suffix),
        ("1e+", Suffix),
        ("1EE3", Suffix),
        ("1Gi3", Suffix),
        ("1e99999999999999999999", Suffix),
        ("Pi", Numeric),
        ("Ei", Numeric),
        ("e-10", Numeric),
        (".e-10", Numeric),
        ("1e30", TooLarge),
        ("1e1000", TooLarge),
        ("1000000000000000P", TooLarge),
        ("-200000000000000000000000000000", TooLarge),
    ];
    for (input, err) in cases {
        assert_eq!(input.parse::<Quantity>(), Err(*err), "input {input:?}");
    }
    assert_eq!(
        FormatWrong.to_string(),
        "quantities must match the regular expression \
         '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    );
    assert_eq!(Suffix.to_string(), "unable to parse quantity's suffix");
    // The largest value still parses.
    let max = format!("{}n", i128::MAX);
    assert_eq!(parse(&max).as_nanos(), i128::MAX);
    assert_eq!(
        format!("{}n", i128::MAX as u128 + 1).parse::<Quantity>(),
        Err(TooLarge)
    );
}

#[test]
fn serde_and_k8s() {
    let q: Quantity = serde_json::from_str("\"1.5Gi\"").unwrap_or_default();
    assert_eq!(q.to_string(), "1536Mi");
    assert_eq!(
        serde_json::to_string(&q).ok().as_deref(),
        Some("\"1536Mi\"")
    );
    let q: Quantity = serde_json::from_str("\" 250m \"").unwrap_or_default();
    assert_eq!(q.milli_value(), 250);
    let q: Quantity = serde_json::from_str("2").unwrap_or_default();
    assert_eq!(q.to_string(), "2");
    let q: Quantity = serde_json::from_str("0.5").unwrap_or_default();
    assert_eq!(q.to_string(), "500m");
    let err = serde_json::from_str::<Quantity>("\"1K\"")
        .err()
        .map(|e| e.to_string());
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("unable to parse quantity's suffix")),
        "{err:?}"
    );
    assert!(serde_json::from_str::<Quantity>("true").is_err());

    let k = K8sQuantity("100m".to_owned());
    assert_eq!(parse_k8s(&k).map(|q| q.milli_value()), Ok(100));
    assert_eq!(
        Quantity::try_from(&K8sQuantity(" 1Gi\n".to_owned())),
        Ok(parse("1Gi"))
    );
    assert_eq!(
        parse_k8s(&K8sQuantity("1K".to_owned())),
        Err(QuantityError::Suffix)
    );
    assert_eq!(K8sQuantity::from(parse("1024Mi")).0, "1Gi");
}

const SUFFIXES: &[&str] = &[
    "", "n", "u", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
];

/// Valid quantity strings within orch's range: sign, digits, suffix or exponent.
fn quantity_string() -> impl Strategy<Value = String> {
    let suffix = prop_oneof![
        proptest::sample::select(SUFFIXES).prop_map(str::to_owned),
        ("[eE]", "[-+]?", 0u8..=18).prop_map(|(e, s, n)| format!("{e}{s}{n}")),
    ];
    (
        "[-+]?",
        "[0-9]{0,10}",
        proptest::option::of("[0-9]{0,12}"),
        suffix,
    )
        .prop_filter_map("needs a digit", |(sign, int, frac, suffix)| {
            let number = match frac {
                Some(frac) => format!("{int}.{frac}"),
                None => int,
            };
            number
                .bytes()
                .any(|b| b.is_ascii_digit())
                .then(|| format!("{sign}{number}{suffix}"))
        })
}

fn pow10(exp: u32) -> i128 {
    10i128.pow(exp)
}

proptest! {
    #[test]
    fn round_trip(s in quantity_string()) {
        let q = s.parse::<Quantity>();
        prop_assert!(q.is_ok(), "{} -> {:?}", s, q);
        let q = q.unwrap_or_default();
        let printed = q.to_string();
        let again = printed.parse::<Quantity>();
        prop_assert_eq!(again, Ok(q), "{} printed as {}", s, printed);
        let reprinted = again.map(|a| a.to_string()).unwrap_or_default();
        prop_assert_eq!(reprinted, printed);
    }

    #[test]
    fn sign_is_symmetric(s in "[0-9]{1,8}(\\.[0-9]{0,12})?(Ki|Mi|m|n|k|e-3|E)?") {
        let pos = parse(&s);
        let neg = parse(&format!("-{s}"));
        prop_assert_eq!(neg.as_nanos(), -pos.as_nanos());
        if !pos.is_zero() {
            prop_assert_eq!(neg.to_string(), format!("-{pos}"));
        }
    }

    #[test]
    fn value_matches_exact_arithmetic(
        a in -1_000_000_000_000i64..1_000_000_000_000,
        ai in 0usize..7,
        b in -1_000_000_000_000i64..1_000_000_000_000,
        bi in 0usize..7,
    ) {
        let suffixes = [("n", 0), ("u", 3), ("m", 6), ("", 9), ("k", 12), ("M", 15), ("G", 18)];
        let (sa, ea) = suffixes[ai];
        let (sb, eb) = suffixes[bi];
        let qa = parse(&format!("{a}{sa}"));
        let qb = parse(&format!("{b}{sb}"));
        let na = i128::from(a) * pow10(ea);
        let nb = i128::from(b) * pow10(eb);
        prop_assert_eq!(qa.as_nanos(), na);
        prop_assert_eq!(qa.cmp(&qb), na.cmp(&nb));
        prop_assert_eq!(qa == qb, na == nb);
        if qa <= qb {
            prop_assert!(qa.milli_value() <= qb.milli_value());
            prop_assert!(qa.value() <= qb.value());
        }
    }

    #[test]
    fn fractions_round_up_to_nano(
        int in 0u64..1_000_000_000,
        frac in "[0-9]{0,14}",
        si in 0usize..5,
        negative in any::<bool>(),
    ) {
        let suffixes = [("n", 0u32), ("u", 3), ("m", 6), ("", 9), ("k", 12)];
        let (suffix, exp) = suffixes[si];
        let sign = if negative { "-" } else { "" };
        let q = parse(&format!("{sign}{int}.{frac}{suffix}"));
        // Exact value in units of 10^-(len(frac)) of the suffix, then scaled to nanos.
        let scaled = i128::from(int) * pow10(frac.len() as u32) + frac.parse::<i128>().unwrap_or(0);
        let shift = i64::from(exp) - frac.len() as i64;
        let mag = if shift >= 0 {
            scaled * pow10(shift as u32)
        } else {
            let div = pow10((-shift) as u32);
            scaled / div + i128::from(scaled % div != 0)
        };
        prop_assert_eq!(q.as_nanos(), if negative { -mag } else { mag });
    }

    #[test]
    fn milli_value_is_monotonic(x in any::<i64>(), y in any::<i64>()) {
        let (lo, hi) = if x <= y { (x, y) } else { (y, x) };
        let lo = Quantity::from_nanos(i128::from(lo), Format::DecimalSI);
        let hi = Quantity::from_nanos(i128::from(hi), Format::DecimalSI);
        prop_assert!(lo.milli_value() <= hi.milli_value());
        prop_assert!(lo.value() <= hi.value());
        // Rounded away from zero: never smaller in magnitude than exact.
        prop_assert!(lo.milli_value().unsigned_abs() * 1_000_000 >= lo.as_nanos().unsigned_abs());
    }

    #[test]
    fn printing_any_value_round_trips(nanos in any::<i128>(), f in 0u8..3) {
        let format = [Format::DecimalSI, Format::DecimalExponent, Format::BinarySI][usize::from(f)];
        let q = Quantity::from_nanos(nanos, format);
        let printed = q.to_string();
        let again = printed.parse::<Quantity>();
        // Binary values past 2^63-1 are capped by Kubernetes' parser.
        if format != Format::BinarySI || q.as_nanos().unsigned_abs() <= BINARY_SI_CAP_NANOS {
            prop_assert_eq!(again, Ok(q), "{}", printed);
        }
    }

    #[test]
    fn never_panics(s in any::<String>()) {
        let _ = s.parse::<Quantity>();
    }

    #[test]
    fn near_miss_strings_round_trip(s in "[-+.0-9eEinumkKMGTP]{0,24}") {
        if let Ok(q) = s.parse::<Quantity>() {
            let printed = q.to_string();
            prop_assert_eq!(printed.parse::<Quantity>(), Ok(q), "{} -> {}", s, printed);
        }
    }
}
