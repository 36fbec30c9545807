//! Values made from the JSON Schemas of the OpenAPI document alone: instances valid under
//! a schema (types, enums, patterns, lengths, ranges, item counts, distinct items, required
//! and unknown properties) and instances broken in exactly one place. An independent
//! validator (`jsonschema`) confirms each one is what it claims to be.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{json, Map, Value};

/// The OpenAPI document, with its component schemas.
pub struct Doc(pub Value);

impl Doc {
    /// Follows `$ref`s to the schema they name.
    pub fn resolve<'a>(&'a self, mut s: &'a Value) -> &'a Value {
        while let Some(r) = s.get("$ref").and_then(Value::as_str) {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{r}: only local component references"));
            s = &self.0["components"]["schemas"][name];
            assert!(!s.is_null(), "{r} names no schema");
        }
        s
    }

    /// The schema with every `$ref` replaced by its target (request schemas have no
    /// cycles), for the validator.
    pub fn inline(&self, s: &Value) -> Value {
        match self.resolve(s) {
            Value::Object(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), self.inline(v))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(|v| self.inline(v)).collect()),
            other => other.clone(),
        }
    }

    /// Whether `v` is valid under `schema`, by the independent validator (a schema it
    /// cannot compile fails the test: nothing may count as broken by default).
    pub fn check(&self, schema: &Value, v: &Value) -> Result<(), String> {
        let inlined = self.inline(schema);
        let validator = jsonschema::draft202012::new(&inlined)
            .unwrap_or_else(|e| panic!("schema does not compile ({e}): {inlined}"));
        validator.validate(v).map_err(|e| e.to_string())
    }

    /// [`Gen::valid`]'s promise, kept: `v` is valid under `schema`.
    pub fn assert_valid(&self, schema: &Value, v: &Value) {
        if let Err(e) = self.check(schema, v) {
            panic!("generated {v} is not valid ({e}) under {schema}");
        }
    }
}

/// Values the server holds, offered instead of random ones some of the time (only where
/// they are valid under the schema too) so that requests get past "unknown ..." answers.
#[derive(Default)]
pub struct Known(pub HashMap<&'static str, Vec<String>>);

impl Known {
    fn for_field(&self, field: &str) -> Option<&Vec<String>> {
        let key = match field {
            "cluster" | "clusters" | "name" => "cluster",
            other => other,
        };
        self.0.get(key).filter(|v| !v.is_empty())
    }
}

/// Longest random text where a schema sets no `maxLength`.
const FREE_TEXT: u64 = 40;

/// The generator: a seeded RNG over a document.
pub struct Gen<'a> {
    pub doc: &'a Doc,
    pub rng: StdRng,
    pub known: &'a Known,
}

fn types(s: &Value) -> Vec<&str> {
    match &s["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Whether `schema` takes integers.
pub fn is_integer(doc: &Doc, schema: &Value) -> bool {
    let s = doc.resolve(schema);
    types(s).contains(&"integer")
        || ["oneOf", "anyOf"].iter().any(|k| {
            s[*k]
                .as_array()
                .is_some_and(|alts| alts.iter().any(|a| is_integer(doc, a)))
        })
}

/// A pattern without its anchors, for the string generator (every pattern of the document
/// must be anchored at both ends, or it would only constrain a substring).
pub fn unanchored(p: &str) -> &str {
    p.strip_prefix('^')
        .and_then(|p| p.strip_suffix('$'))
        .unwrap_or_else(|| panic!("pattern {p:?} is not anchored with ^...$"))
}

fn int_bounds(s: &Value) -> (i64, i64) {
    let wide = s["format"] != "int32";
    let min = s["minimum"]
        .as_i64()
        .unwrap_or(if wide { i64::MIN } else { i32::MIN.into() });
    let max = s["maximum"]
        .as_i64()
        .unwrap_or(if wide { i64::MAX } else { i32::MAX.into() });
    (min, max)
}

impl Gen<'_> {
    /// A value valid under `schema`; `field` names the property (for known values).
    pub fn valid(&mut self, schema: &Value, field: &str) -> Value {
        let s = self.doc.resolve(schema);
        for key in ["oneOf", "anyOf"] {
            if let Some(alts) = s[key].as_array() {
                let alt = alts.choose(&mut self.rng).expect("alternatives");
                return self.valid(alt, field);
            }
        }
        if let Some(values) = s["enum"].as_array() {
            return values.choose(&mut self.rng).expect("enum values").clone();
        }
        let ts = types(s);
        let nullable = ts.contains(&"null");
        if nullable && self.rng.gen_bool(0.15) {
            return Value::Null;
        }
        // An optional value's other alternative (`Option<T>` of a component).
        if ts == ["null"] {
            return Value::Null;
        }
        let t = ts
            .iter()
            .find(|t| **t != "null")
            .copied()
            .unwrap_or_else(|| panic!("schema of {field} without a type: {s}"));
        match t {
            "string" => Value::String(self.string(s, field)),
            "integer" => json!(self.integer(s)),
            "boolean" => json!(self.rng.gen::<bool>()),
            "array" => self.array(s, field),
            "object" => self.object(s),
            other => panic!("type {other} of {field} not generated"),
        }
    }

    fn string(&mut self, s: &Value, field: &str) -> String {
        let min = s["minLength"].as_u64().unwrap_or(0);
        let max = s["maxLength"].as_u64();
        let fits = |v: &str| {
            let n = v.chars().count() as u64;
            n >= min && max.is_none_or(|m| n <= m)
        };
        if let Some(known) = self.known.for_field(field) {
            let v = known.choose(&mut self.rng).expect("known").clone();
            if self.rng.gen_bool(0.6) && self.doc.check(s, &json!(v)).is_ok() {
                return v;
            }
        }
        if let Some(p) = s["pattern"].as_str() {
            let re = rand_regex::Regex::compile(unanchored(p), 16)
                .unwrap_or_else(|e| panic!("pattern {p:?}: {e}"));
            for _ in 0..200 {
                let v: String = self.rng.sample(&re);
                if fits(&v) {
                    return v;
                }
            }
            panic!("no string of {p:?} within {min}..={max:?} characters");
        }
        let top = max.unwrap_or(min + FREE_TEXT);
        let len = match self.rng.gen_range(0..10) {
            0 => top,
            1 => min,
            _ => self.rng.gen_range(min..=top.min(min + FREE_TEXT)),
        };
        (0..len)
            .map(|_| {
                if self.rng.gen_bool(0.9) {
                    char::from(self.rng.gen_range(0x20u8..0x7f))
                } else {
                    self.rng.gen::<char>()
                }
            })
            .collect()
    }

    fn integer(&mut self, s: &Value) -> i64 {
        let (min, max) = int_bounds(s);
        match self.rng.gen_range(0..8) {
            0 => min,
            1 => max,
            _ => self.rng.gen_range(min..=max),
        }
    }

    fn array(&mut self, s: &Value, field: &str) -> Value {
        let min = s["minItems"].as_u64().unwrap_or(0) as usize;
        let max = s["maxItems"].as_u64().map(|m| m as usize);
        let top = max.unwrap_or(min + 3);
        let n = if self.rng.gen_bool(0.1) {
            top
        } else {
            self.rng.gen_range(min..=top.min(min + 3))
        };
        let unique = s["uniqueItems"] == true;
        let mut items: Vec<Value> = Vec::with_capacity(n);
        let mut tries = 0;
        while items.len() < n && tries < 20 * (n + 1) {
            tries += 1;
            let v = self.valid(&s["items"], field);
            if !unique || !items.contains(&v) {
                items.push(v);
            }
        }
        assert!(
            items.len() >= min,
            "{field}: could not make {min} distinct items"
        );
        Value::Array(items)
    }

    fn object(&mut self, s: &Value) -> Value {
        let required: Vec<&str> = s["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut out = Map::new();
        if let Some(props) = s["properties"].as_object() {
            for (name, schema) in props {
                if required.contains(&name.as_str()) || self.rng.gen_bool(0.5) {
                    let v = self.valid(schema, name);
                    out.insert(name.clone(), v);
                }
            }
        }
        Value::Object(out)
    }

    /// `valid` (an instance of `schema`) broken in one place, with what was broken; `None`
    /// when the schema leaves nothing to break there.
    pub fn broken(&mut self, schema: &Value, valid: &Value) -> Option<(String, Value)> {
        let s = self.doc.resolve(schema);
        if let (Some(props), Value::Object(obj)) = (s["properties"].as_object(), valid) {
            let required: Vec<&str> = s["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut obj = obj.clone();
            match self.rng.gen_range(0..4) {
                0 if !required.is_empty() => {
                    let name = *required.choose(&mut self.rng).expect("required");
                    obj.remove(name);
                    return Some((format!("without required {name}"), Value::Object(obj)));
                }
                1 if s["additionalProperties"] == false => {
                    obj.insert("not_in_the_document".into(), json!(1));
                    return Some(("an unknown property".into(), Value::Object(obj)));
                }
                _ => {
                    let mut names: Vec<&String> = props.keys().collect();
                    names.shuffle(&mut self.rng);
                    for name in names {
                        let inner = match obj.get(name) {
                            Some(v) => v.clone(),
                            None => self.valid(&props[name], name),
                        };
                        if let Some((what, v)) = self.broken(&props[name], &inner) {
                            obj.insert(name.clone(), v);
                            return Some((format!("{name}: {what}"), Value::Object(obj)));
                        }
                    }
                    return None;
                }
            }
        }
        let ts = types(s);
        let mut ways: Vec<(String, Value)> = Vec::new();
        if ts.contains(&"string") || s["enum"].is_array() {
            ways.push(("a number for a string".into(), json!(7)));
            if let Some(p) = s["pattern"].as_str() {
                let text = valid.as_str().unwrap_or_default();
                ways.push((format!("not of {p}"), json!(format!("{text}!"))));
            }
            if let Some(max) = s["maxLength"].as_u64() {
                ways.push(("too long".into(), json!("a".repeat(max as usize + 1))));
            }
            if s["enum"].is_array() {
                ways.push(("not one of the enum".into(), json!("not_a_variant")));
            }
        }
        if ts.contains(&"integer") {
            let (min, max) = int_bounds(s);
            ways.push(("a string for an integer".into(), json!("1")));
            ways.push(("a fraction".into(), json!(1.5)));
            if s["maximum"].is_number() {
                ways.push(("above maximum".into(), json!(max as i128 + 1)));
            }
            if s["minimum"].is_number() {
                ways.push(("below minimum".into(), json!(min as i128 - 1)));
            }
        }
        if ts.contains(&"boolean") {
            ways.push(("a string for a boolean".into(), json!("yes")));
        }
        if ts.contains(&"array") {
            ways.push(("an object for an array".into(), json!({})));
            if let (Some(max), Value::Array(items)) = (s["maxItems"].as_u64(), valid) {
                let mut more = items.clone();
                while more.len() as u64 <= max {
                    let v = self.valid(&s["items"], "");
                    more.push(v);
                }
                ways.push(("too many items".into(), Value::Array(more)));
            }
            if let (true, Value::Array(items)) = (s["uniqueItems"] == true, valid) {
                if let Some(first) = items.first() {
                    let mut twice = items.clone();
                    twice.push(first.clone());
                    ways.push(("an item twice".into(), Value::Array(twice)));
                }
            }
        }
        let pick = ways.choose(&mut self.rng)?.clone();
        // Only what the document really forbids counts as broken.
        self.doc.check(schema, &pick.1).is_err().then_some(pick)
    }
}
