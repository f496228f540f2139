use super::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
use proptest::prelude::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn sel(s: &str) -> Selector {
    match s.parse::<Selector>() {
        Ok(sel) => sel,
        Err(e) => panic!("{s:?} should parse: {e}"),
    }
}

fn req(key: &str, op: Operator, values: &[&str]) -> Requirement {
    let values = values.iter().map(|v| (*v).to_owned()).collect();
    match Requirement::new(key, op, values) {
        Ok(r) => r,
        Err(e) => panic!("{key} {op}: {e}"),
    }
}

#[test]
fn parse_and_print() {
    let cases = [
        ("", ""),
        ("x=a,y=b,z=c", "x=a,y=b,z=c"),
        ("z=c,x=a,y=b", "x=a,y=b,z=c"),
        ("x!=a,y=b", "x!=a,y=b"),
        ("x=", "x="),
        ("x= ", "x="),
        ("x=,z= ", "x=,z="),
        ("x= ,z= ", "x=,z="),
        ("!x", "!x"),
        ("x>1", "x>1"),
        ("x>1,z<5", "x>1,z<5"),
        ("a==b", "a=b"),
        ("x notin (y, z)", "x notin (y,z)"),
        (
            "app=web,tier!=db,env in (a,b),!legacy",
            "app=web,env in (a,b),!legacy,tier!=db",
        ),
        ("env in (b,a,b)", "env in (a,b)"),
        ("  key  ", "key"),
        ("\tapp\n=\rweb ", "app=web"),
        (
            "x in (foo,,baz),y,z notin ()",
            "x in (,baz,foo),y,z notin ()",
        ),
        ("x in (,a)", "x in (,a)"),
        ("x in (a,)", "x in (,a)"),
        ("x in(a)", "x in (a)"),
        ("x notin(a)", "x notin (a)"),
        ("notin=in", "notin=in"),
        ("in in (in,notin)", "in in (in,notin)"),
        ("example.com/app=Web_1.x", "example.com/app=Web_1.x"),
        ("a,a=b,a!=c", "a,a=b,a!=c"),
        ("b=1,a=2,b", "a=2,b=1,b"),
    ];
    for (input, printed) in cases {
        let s = sel(input);
        assert_eq!(s.to_string(), printed, "input {input:?}");
        assert_eq!(sel(printed), s, "reparsing {printed:?}");
    }
    assert!(sel("").is_everything());
    assert_eq!(
        sel("app=web,!legacy").requirements(),
        &[
            req("app", Operator::Equals, &["web"]),
            req("legacy", Operator::DoesNotExist, &[])
        ]
    );
}

#[test]
fn parse_errors() {
    let cases = [
        (
            "x==a==b",
            "found '==', expected: ',' or 'end of string' (at offset 4)",
        ),
        (
            "!x=a",
            "found '=', expected: ',' or 'end of string' (at offset 2)",
        ),
        (
            "x<a",
            "unable to parse requirement: values[0]: Invalid value: \"a\": for 'Gt', 'Lt' \
             operators, the value must be an integer (at offset 0)",
        ),
        (
            "a,",
            "found '', expected: identifier after ',' (at offset 2)",
        ),
        (
            ",a",
            "found ',', expected: !, identifier, or 'end of string' (at offset 0)",
        ),
        (
            "=a",
            "found '=', expected: !, identifier, or 'end of string' (at offset 0)",
        ),
        (
            "a b",
            "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt (at offset 2)",
        ),
        (
            "a in b",
            "unable to parse requirement: found 'b' expected: '(' (at offset 5)",
        ),
        (
            "a in (b",
            "unable to parse requirement: found '', expected: ',' or ')' (at offset 7)",
        ),
        (
            "a in (",
            "unable to parse requirement: found '', expected: ',', ')' or identifier (at offset 6)",
        ),
        (
            "a in (b c)",
            "unable to parse requirement: found 'c', expected: ',' or ')' (at offset 8)",
        ),
        (
            "a in (,=)",
            "unable to parse requirement: found '=', expected: ',', or identifier (at offset 7)",
        ),
        (
            "a=(",
            "unable to parse requirement: found '(', expected: identifier (at offset 2)",
        ),
        (
            "!",
            "unable to parse requirement: found '', expected: identifier (at offset 1)",
        ),
        (
            "!!a",
            "unable to parse requirement: found '!', expected: identifier (at offset 1)",
        ),
        (
            "a=b c",
            "found 'c', expected: ',' or 'end of string' (at offset 4)",
        ),
    ];
    for (input, message) in cases {
        let err = input.parse::<Selector>().err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some(message), "input {input:?}");
    }
    let invalid = [
        "x=a||y=b",
        "Bad Key=x",
        "-a=b",
        "a/b/c",
        "a=-b",
        "a in (x,-y)",
        "a=b/c",
        &format!("a={}", "v".repeat(64)),
    ];
    for input in invalid {
        assert!(input.parse::<Selector>().is_err(), "{input:?}");
    }
    let err = "k_=v"
        .parse::<Selector>()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.starts_with(
            "unable to parse requirement: key: Invalid value: \"k_\": name part must consist"
        ),
        "{err}"
    );
}

#[test]
fn matching() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);
    let cases: &[Case] = &[
        ("", &[("x", "y")], true),
        ("", &[], true),
        ("x=y", &[("x", "y")], true),
        ("x=y,z=w", &[("x", "y"), ("z", "w")], true),
        ("x!=y,z!=w", &[("x", "z"), ("z", "a")], true),
        ("notin=in", &[("notin", "in")], true),
        ("x", &[("x", "z")], true),
        ("!x", &[("y", "z")], true),
        ("x>1", &[("x", "2")], true),
        ("x<1", &[("x", "0")], true),
        ("x<1", &[("x", "-5")], true),
        ("x=z", &[], false),
        ("x=y", &[("x", "z")], false),
        ("x=y,z=w", &[("x", "w"), ("z", "w")], false),
        ("x!=y,z!=w", &[("x", "z"), ("z", "w")], false),
        ("x", &[("y", "z")], false),
        ("!x", &[("x", "z")], false),
        ("x>1", &[("x", "0")], false),
        ("x>1", &[("x", "1")], false),
        ("x<1", &[("x", "2")], false),
        ("x>1", &[], false),
        ("x>1", &[("x", "two")], false),
        ("x!=y", &[], true),
        ("x notin (a,b)", &[], true),
        ("x notin (a,b)", &[("x", "a")], false),
        ("x notin (a,b)", &[("x", "c")], true),
        ("x in (a,b)", &[("x", "b")], true),
        ("x in (a,b)", &[("x", "c")], false),
        ("x in (a,b)", &[], false),
        ("x in (a,)", &[("x", "")], true),
        ("x=", &[("x", "")], true),
        ("x=", &[], false),
        (
            "app=web,tier!=db,env in (a,b),!legacy",
            &[("app", "web"), ("env", "a")],
            true,
        ),
        (
            "app=web,tier!=db,env in (a,b),!legacy",
            &[("app", "web"), ("env", "a"), ("tier", "db")],
            false,
        ),
        (
            "app=web,tier!=db,env in (a,b),!legacy",
            &[("app", "web"), ("env", "a"), ("legacy", "")],
            false,
        ),
    ];
    for (selector, set, expected) in cases {
        assert_eq!(
            sel(selector).matches(&labels(set)),
            *expected,
            "{selector:?} on {set:?}"
        );
    }
    assert!(!Selector::nothing().matches(&labels(&[])));
    assert!(Selector::everything().matches(&labels(&[("a", "b")])));
    assert_eq!(Selector::nothing().to_string(), "");
}

#[test]
fn requirement_validation() {
    let cases: &[(&str, Operator, &[&str], &str)] = &[
        (
            "x",
            Operator::In,
            &[],
            "values: Invalid value: []string{}: for 'in', 'notin' operators, values set can't be empty",
        ),
        (
            "x",
            Operator::Equals,
            &["a", "b"],
            "values: Invalid value: []string{\"a\", \"b\"}: exact-match compatibility requires one single value",
        ),
        (
            "x",
            Operator::Exists,
            &["a"],
            "values: Invalid value: []string{\"a\"}: values set must be empty for exists and does not exist",
        ),
        (
            "x",
            Operator::Gt,
            &[],
            "values: Invalid value: []string{}: for 'Gt', 'Lt' operators, exactly one value is required",
        ),
        (
            "x",
            Operator::Lt,
            &["1.5"],
            "values[0]: Invalid value: \"1.5\": for 'Gt', 'Lt' operators, the value must be an integer",
        ),
    ];
    for (key, op, values, message) in cases {
        let values = values.iter().map(|v| (*v).to_owned()).collect();
        let err = Requirement::new(*key, *op, values)
            .err()
            .map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some(*message));
    }
    let err = Requirement::new("", Operator::Exists, vec!["a b".to_owned()])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.starts_with("[key: Invalid value: \"\": name part must be non-empty; "),
        "{err}"
    );
    assert!(
        err.contains(", values: Invalid value: []string{\"a b\"}"),
        "{err}"
    );
    assert!(
        err.contains(", values[0]: Invalid value: \"a b\": a valid label must be"),
        "{err}"
    );
    assert_eq!(req("k", Operator::Gt, &["7"]).to_string(), "k>7");
    // Label values cannot carry a sign, so bounds are non-negative.
    assert!(Requirement::new("k", Operator::Gt, vec!["-7".to_owned()]).is_err());
}

#[test]
fn helpers() {
    let s = Selector::from_match_labels(&labels(&[("b", "2"), ("a", "1")]));
    assert_eq!(s.to_string(), "a=1,b=2");
    assert!(s.matches(&labels(&[("a", "1"), ("b", "2"), ("c", "3")])));
    assert!(!s.matches(&labels(&[("a", "1")])));
    assert_eq!(s.requires_exact_match("b"), Some("2"));
    assert_eq!(s.requires_exact_match("c"), None);
    assert!(Selector::from_match_labels(&BTreeMap::new()).is_everything());
    assert!(Selector::try_from_match_labels(&labels(&[("a b", "1")])).is_err());
    assert_eq!(
        Selector::try_from_match_labels(&labels(&[("a", "1")])),
        Ok(sel("a=1"))
    );
    let s =
        sel("c=3,a=1")
            .and(req("b", Operator::Exists, &[]))
            .and(req("a", Operator::NotIn, &["x"]));
    assert_eq!(s.to_string(), "a=1,a notin (x),b,c=3");
    assert_eq!(sel("x in (a)").requires_exact_match("x"), Some("a"));
    assert_eq!(sel("x in (a,b)").requires_exact_match("x"), None);
    assert_eq!(Selector::from_label_selector(None), Ok(Selector::nothing()));
}

fn expr(key: &str, op: &str, values: Option<&[&str]>) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.to_owned(),
        operator: op.to_owned(),
        values: values.map(|vs| vs.iter().map(|v| (*v).to_owned()).collect()),
    }
}

#[test]
fn label_selector_conversion() {
    let ls = LabelSelector {
        match_labels: Some(labels(&[("app", "web")])),
        match_expressions: Some(vec![
            expr("env", "In", Some(&["prod", "staging"])),
            expr("tier", "NotIn", Some(&["db"])),
            expr("legacy", "DoesNotExist", None),
            expr("canary", "Exists", Some(&[])),
        ]),
    };
    let s = Selector::try_from(&ls).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s.to_string(),
        "app=web,canary,env in (prod,staging),!legacy,tier notin (db)"
    );
    assert!(s.matches(&labels(&[("app", "web"), ("env", "prod"), ("canary", "1")])));
    assert!(!s.matches(&labels(&[("app", "web"), ("env", "prod")])));
    assert!(Selector::try_from(&LabelSelector::default()).is_ok_and(|s| s.is_everything()));

    let bad = LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![expr("a", "Foo", None)]),
    };
    assert_eq!(
        Selector::try_from(&bad)
            .err()
            .map(|e| e.to_string())
            .as_deref(),
        Some("matchExpressions[0].operator: Invalid value: \"Foo\": not a valid selector operator")
    );
    let bad = LabelSelector {
        match_labels: Some(labels(&[("ok", "-bad")])),
        match_expressions: Some(vec![
            expr("a", "In", None),
            expr("b", "Exists", Some(&["x"])),
            expr("Bad Key", "NotIn", Some(&["ok", "not ok"])),
        ]),
    };
    let Err(SelectorError::Invalid(errs)) = Selector::try_from(&bad) else {
        panic!("expected field errors");
    };
    let fields: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        fields,
        [
            "matchLabels",
            "matchExpressions[0].values",
            "matchExpressions[1].values",
            "matchExpressions[2].key",
            "matchExpressions[2].values[1]",
        ]
    );
    assert_eq!(
        errs[1].to_string(),
        "matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
    );
    assert_eq!(
        errs[2].to_string(),
        "matchExpressions[1].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
    );
    assert!(errs[3].to_string().starts_with(
        "matchExpressions[2].key: Invalid value: \"Bad Key\": name part must consist"
    ));
}

fn key_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]([a-z0-9._-]{0,8}[a-z0-9])?",
        "[a-z]{1,5}(\\.[a-z]{1,5}){0,2}/[A-Za-z0-9]([A-Za-z0-9._-]{0,6}[A-Za-z0-9])?",
        Just("in".to_owned()),
        Just("notin".to_owned()),
    ]
}

fn value_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        "([A-Za-z0-9]([A-Za-z0-9._-]{0,6}[A-Za-z0-9])?)?",
        Just("in".to_owned()),
        Just("notin".to_owned()),
    ]
}

fn requirement_strategy() -> impl Strategy<Value = Requirement> {
    let ops = proptest::sample::select(vec![
        Operator::In,
        Operator::NotIn,
        Operator::Exists,
        Operator::DoesNotExist,
        Operator::Equals,
        Operator::NotEquals,
        Operator::Gt,
        Operator::Lt,
    ]);
    (
        key_strategy(),
        ops,
        proptest::collection::vec(value_strategy(), 1..4),
        0u32..1000,
    )
        .prop_filter_map("valid", |(key, op, values, n)| {
            let values = match op {
                Operator::In | Operator::NotIn => values,
                Operator::Exists | Operator::DoesNotExist => Vec::new(),
                Operator::Equals | Operator::NotEquals => values.into_iter().take(1).collect(),
                Operator::Gt | Operator::Lt => vec![n.to_string()],
            };
            Requirement::new(key, op, values).ok()
        })
}

const KEYS: &[&str] = &["a", "b", "c", "app.kubernetes.io/name"];
const VALUES: &[&str] = &["x", "y", "z"];

fn label_selector_strategy() -> impl Strategy<Value = LabelSelector> {
    let value = proptest::sample::select(VALUES).prop_map(str::to_owned);
    let key = proptest::sample::select(KEYS).prop_map(str::to_owned);
    let op = proptest::sample::select(&["In", "NotIn", "Exists", "DoesNotExist"][..]);
    let expression = (
        key.clone(),
        op,
        proptest::collection::vec(value.clone(), 1..3),
    )
        .prop_map(|(key, op, values)| LabelSelectorRequirement {
            values: matches!(op, "In" | "NotIn").then_some(values),
            key,
            operator: op.to_owned(),
        });
    (
        proptest::option::of(proptest::collection::btree_map(key, value, 0..3)),
        proptest::option::of(proptest::collection::vec(expression, 0..4)),
    )
        .prop_map(|(match_labels, match_expressions)| LabelSelector {
            match_labels,
            match_expressions,
        })
}

/// `LabelSelector` semantics, written directly from the API documentation.
fn reference_matches(ls: &LabelSelector, set: &BTreeMap<String, String>) -> bool {
    let labels_ok = ls
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| set.get(k) == Some(v));
    let exprs_ok = ls.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        let value = set.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            _ => value.is_none(),
        }
    });
    labels_ok && exprs_ok
}

proptest! {
    #[test]
    fn display_round_trips(reqs in proptest::collection::vec(requirement_strategy(), 0..6)) {
        let s = Selector::new(reqs);
        let printed = s.to_string();
        prop_assert_eq!(printed.parse::<Selector>(), Ok(s), "{}", printed);
    }

    #[test]
    fn label_selector_matches_like_its_conversion(
        ls in label_selector_strategy(),
        set in proptest::collection::btree_map(
            proptest::sample::select(KEYS).prop_map(str::to_owned),
            proptest::sample::select(VALUES).prop_map(str::to_owned),
            0..4,
        ),
    ) {
        let converted = Selector::try_from(&ls);
        prop_assert!(converted.is_ok());
        let converted = converted.unwrap_or_default();
        prop_assert_eq!(converted.matches(&set), reference_matches(&ls, &set));
        // ...and so does its string form.
        let reparsed = converted.to_string().parse::<Selector>().unwrap_or_else(|_| Selector::nothing());
        prop_assert_eq!(reparsed.matches(&set), reference_matches(&ls, &set));
    }

    #[test]
    fn never_panics(s in any::<String>()) {
        let _ = s.parse::<Selector>();
    }

    #[test]
    fn near_miss_strings_round_trip(s in "[a-c !=<>(),0-9]{0,20}|([a-c]|in|notin| |!|=|,|\\(|\\)){0,12}") {
        if let Ok(sel) = s.parse::<Selector>() {
            let printed = sel.to_string();
            prop_assert_eq!(printed.parse::<Selector>(), Ok(sel), "{} -> {}", s, printed);
        }
    }
}
