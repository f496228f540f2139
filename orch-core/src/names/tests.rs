use super::*;
use proptest::prelude::*;

fn ok(errs: Vec<String>) -> bool {
    errs.is_empty()
}

#[test]
fn dns1123_label() {
    for v in [
        "a",
        "ab",
        "abc",
        "a1",
        "a-1",
        "a--1--2--b",
        "0",
        "01",
        "0-0",
        "1-2-3",
    ] {
        assert!(ok(is_dns1123_label(v)), "{v}");
    }
    let long = "a".repeat(63);
    assert!(ok(is_dns1123_label(&long)));
    for v in [
        "", "A", "ABC", "aBc", "A1", "a-", "-a", "a_b", "a b", "a@b", "a/b", "é",
    ] {
        assert!(!ok(is_dns1123_label(v)), "{v}");
    }
    assert_eq!(
        is_dns1123_label("My_Name"),
        vec![
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters \
             or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  \
             or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
        ]
    );
    assert_eq!(is_dns1123_label("a.b"), vec!["must not contain dots"]);
    let errs = is_dns1123_label(&"a".repeat(64));
    assert_eq!(errs, vec!["must be no more than 63 characters"]);
}

#[test]
fn dns1123_subdomain() {
    for v in ["a", "a.b", "a-1.b-2", "0.a", "example.com", "a.b.c.d.e"] {
        assert!(ok(is_dns1123_subdomain(v)), "{v}");
    }
    let long_label = "a".repeat(100);
    assert!(ok(is_dns1123_subdomain(&long_label)));
    let max = format!("{}.{}", "a".repeat(126), "b".repeat(126));
    assert_eq!(max.len(), 253);
    assert!(ok(is_dns1123_subdomain(&max)));
    for v in [
        "", ".", "a.", ".a", "a..b", "A.b", "a_b.c", "-a.b", "a-.b", "a .b",
    ] {
        assert!(!ok(is_dns1123_subdomain(v)), "{v}");
    }
    let errs = is_dns1123_subdomain(&"a".repeat(254));
    assert_eq!(errs, vec!["must be no more than 253 characters"]);
    assert!(is_dns1123_subdomain("A")[0].ends_with("(e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"));
}

#[test]
fn dns1035_label() {
    for v in ["a", "ab", "a1", "a-1", "a--b", "my-service"] {
        assert!(ok(is_dns1035_label(v)), "{v}");
    }
    for v in ["", "1", "1a", "-a", "a-", "A", "a.b", "a_b"] {
        assert!(!ok(is_dns1035_label(v)), "{v}");
    }
    assert!(is_dns1035_label("1a")[0].starts_with("a DNS-1035 label must consist"));
    assert!(!ok(is_dns1035_label(&"a".repeat(64))));
}

#[test]
fn qualified_name() {
    for v in [
        "simple",
        "now-with-dashes",
        "1-starts-with-num",
        "1234",
        "simple/simple",
        "now-with-dashes/simple",
        "now-with-dashes/now-with-dashes",
        "now.with.dots/now-with-dashes",
        "now-with.dashes-and.dots/now_with.dashes-and_dots",
        "MixedCase",
        "a_b",
        "app.kubernetes.io/name",
    ] {
        assert!(ok(is_qualified_name(v)), "{v}");
    }
    for v in [
        "",
        "nospecialchars%^=@",
        "cantendwithadash-",
        "-cantstartwithadash",
        "only/one/slash",
        "Example.com/name",
        "example_com/name",
        "/name",
        "prefix/",
        "a b",
        "_a",
    ] {
        assert!(!ok(is_qualified_name(v)), "{v}");
    }
    assert_eq!(
        is_qualified_name("/a"),
        vec!["prefix part must be non-empty"]
    );
    assert_eq!(
        is_qualified_name("a/"),
        vec![
            "name part must be non-empty".to_owned(),
            format!(
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must \
                 start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or \
                 '123-abc', regex used for validation is '{LABEL_KEY_FMT}')"
            )
        ]
    );
    assert_eq!(
        is_qualified_name(&"a".repeat(64)),
        vec!["name part must be no more than 63 bytes"]
    );
    let long_prefix = format!("{}/a", "a".repeat(254));
    assert_eq!(
        is_qualified_name(&long_prefix),
        vec!["prefix part must be no more than 253 bytes"]
    );
    assert!(is_qualified_name("a/b/c")[0].starts_with("a valid label key must consist"));
}

#[test]
fn label_value() {
    for v in [
        "",
        "simple",
        "now-with-dashes",
        "1-starts-with-num",
        "end-with-num-1",
        "1234",
        "A.b_C-d",
        &"a".repeat(63),
    ] {
        assert!(ok(is_label_value(v)), "{v}");
    }
    for v in [
        "nospecialchars%^=@",
        "Tama-nui-te-rā.is.Māori.sun",
        "\\backslashes",
        "-starts",
        "ends-",
        "_a",
        "a b",
        "a/b",
    ] {
        assert!(!ok(is_label_value(v)), "{v}");
    }
    assert_eq!(
        is_label_value(&"a".repeat(64)),
        vec!["must be no more than 63 bytes"]
    );
    assert!(is_label_value("-")[0].starts_with("a valid label must be an empty string"));
}

#[test]
fn iana_svc_name() {
    for v in ["http", "h-t-t-p", "a", "http2", "1a", "a1b2c3d4e5f6g7h"] {
        assert!(ok(is_iana_svc_name(v)), "{v}");
    }
    assert_eq!(
        is_iana_svc_name("1234"),
        vec!["must contain at least one letter (a-z)"]
    );
    assert_eq!(
        is_iana_svc_name("a--b"),
        vec!["must not contain consecutive hyphens"]
    );
    assert_eq!(
        is_iana_svc_name("-ab"),
        vec!["must not begin or end with a hyphen"]
    );
    assert_eq!(
        is_iana_svc_name("abcdefghijklmnop"),
        vec!["must be no more than 15 characters"]
    );
    assert_eq!(
        is_iana_svc_name("Http"),
        vec!["must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"]
    );
    assert_eq!(is_iana_svc_name("").len(), 2);
    assert!(!ok(is_iana_svc_name("a_b")));
}

#[test]
fn config_map_key() {
    for v in ["a", "a.b", "A_B-c.d", ".a", "a..b", "1"] {
        assert!(ok(is_config_map_key(v)), "{v}");
    }
    assert_eq!(is_config_map_key("."), vec!["must not be '.'"]);
    assert_eq!(is_config_map_key(".."), vec!["must not be '..'"]);
    assert_eq!(is_config_map_key("..a"), vec!["must not start with '..'"]);
    assert_eq!(is_config_map_key("").len(), 1);
    assert!(!ok(is_config_map_key("a/b")));
    assert!(!ok(is_config_map_key("a b")));
    assert!(ok(is_config_map_key(&"a".repeat(253))));
    assert_eq!(
        is_config_map_key(&"a".repeat(254)),
        vec!["must be no more than 253 characters"]
    );
}

#[test]
fn env_var_name() {
    for v in [
        "A", "AB", "AbC_123", "_", "Abc_", "A__B", "A.B", "a-b", "-a", ".a", "a..b",
    ] {
        assert!(ok(is_env_var_name(v)), "{v}");
    }
    for v in ["", "1", "123", "1A", "A B", "A=B", "A$", "é"] {
        assert!(!ok(is_env_var_name(v)), "{v}");
    }
    assert_eq!(is_env_var_name(".."), vec!["must not be '..'"]);
    assert_eq!(is_env_var_name("."), vec!["must not be '.'"]);
    assert!(
        is_env_var_name("1a")[0].contains("'my.env-name',  or 'MY_ENV.NAME',  or 'MyEnvName1'")
    );
}

#[test]
fn c_identifier() {
    for v in ["a", "A", "_", "_a1", "ABC_def"] {
        assert!(ok(is_c_identifier(v)), "{v}");
    }
    for v in ["", "1", "a-b", "a.b", "a b"] {
        assert!(!ok(is_c_identifier(v)), "{v}");
    }
}

proptest! {
    #[test]
    fn generated_dns_labels_pass(v in "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?") {
        prop_assert!(ok(is_dns1123_label(&v)));
        prop_assert!(ok(is_dns1123_subdomain(&v)));
        prop_assert!(ok(is_qualified_name(&v)));
        prop_assert!(ok(is_label_value(&v)));
    }

    #[test]
    fn generated_subdomains_pass(v in "[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?){0,8}") {
        prop_assert!(ok(is_dns1123_subdomain(&v)));
        let key = format!("{v}/Name_1.x");
        prop_assert!(ok(is_qualified_name(&key)));
    }

    #[test]
    fn generated_label_values_pass(v in "([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?") {
        prop_assert!(ok(is_label_value(&v)));
    }

    #[test]
    fn uppercase_fails_dns(prefix in "[a-z0-9]{0,30}", upper in "[A-Z]", suffix in "[a-z0-9]{0,30}") {
        let v = format!("{prefix}{upper}{suffix}");
        prop_assert!(!ok(is_dns1123_label(&v)));
        prop_assert!(!ok(is_dns1123_subdomain(&v)));
        prop_assert!(!ok(is_dns1035_label(&v)));
        prop_assert!(!ok(is_iana_svc_name(&v)));
    }

    #[test]
    fn over_long_fails(v in "[a-z]{64,300}") {
        prop_assert!(!ok(is_dns1123_label(&v)));
        prop_assert!(!ok(is_dns1035_label(&v)));
        prop_assert!(!ok(is_qualified_name(&v)));
        prop_assert!(!ok(is_label_value(&v)));
        prop_assert!(!ok(is_iana_svc_name(&v)));
        if v.len() > 253 {
            prop_assert!(!ok(is_dns1123_subdomain(&v)));
            prop_assert!(!ok(is_config_map_key(&v)));
        }
    }

    #[test]
    fn arbitrary_input_never_panics(v in any::<String>()) {
        let _ = is_dns1123_label(&v);
        let _ = is_dns1123_subdomain(&v);
        let _ = is_dns1035_label(&v);
        let _ = is_qualified_name(&v);
        let _ = is_label_value(&v);
        let _ = is_iana_svc_name(&v);
        let _ = is_config_map_key(&v);
        let _ = is_env_var_name(&v);
        let _ = is_c_identifier(&v);
    }
}
