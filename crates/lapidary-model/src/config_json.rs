//! Reading one section of a family's `config.json` (`text_config`, `vision_config`, the top
//! level) with HF's conventions: a field absent or `null` takes its default, a field present
//! with the wrong type is an error naming the section and the field. Not the family's
//! validation of the values (each config type does that).

use lapidary_core::{Error, Result};
use serde_json::Value;

/// One JSON object of a config file, named in every error.
#[derive(Clone, Copy, Debug)]
pub struct Section<'a> {
    /// The section's name in errors (`text_config`, …).
    pub name: &'a str,
    /// Its JSON object.
    pub value: &'a Value,
}

impl<'a> Section<'a> {
    /// The section `name` of `value`.
    pub fn new(name: &'a str, value: &'a Value) -> Self {
        Section { name, value }
    }

    /// The field's value, `None` when absent or null.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.value.get(key).filter(|v| !v.is_null())
    }

    /// An error about `key` in this section.
    pub fn error(&self, key: &str, what: impl std::fmt::Display) -> Error {
        Error::invalid(format!("{}: {key} {what}", self.name))
    }

    /// A required non-negative integer.
    pub fn usize(&self, key: &str) -> Result<usize> {
        match self.get(key) {
            None => Err(Error::invalid(format!("{}: missing field {key}", self.name))),
            Some(_) => self.usize_or(key, 0),
        }
    }

    /// A non-negative integer, `default` when absent.
    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(x) => x
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .ok_or_else(|| self.error(key, format!("must be a non-negative integer, got {x}"))),
        }
    }

    /// A number, `default` when absent.
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(x) => x.as_f64().ok_or_else(|| self.error(key, format!("must be a number, got {x}"))),
        }
    }

    /// A number, `None` when absent.
    pub fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        self.get(key).map(|_| self.f64_or(key, 0.0)).transpose()
    }

    /// A boolean, `default` when absent.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(x) => x.as_bool().ok_or_else(|| self.error(key, format!("must be true or false, got {x}"))),
        }
    }

    /// A string, `None` when absent.
    pub fn str_opt(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(x) => x.as_str().map(Some).ok_or_else(|| self.error(key, format!("must be a string, got {x}"))),
        }
    }

    /// The nested object `key` as a section named `<this>.<key>`, `None` when absent.
    pub fn section(&self, key: &str, name: &'a str) -> Result<Option<Section<'a>>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) if v.is_object() => Ok(Some(Section::new(name, v))),
            Some(v) => Err(self.error(key, format!("must be an object, got {v}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_and_null_take_the_default_and_wrong_types_name_the_field() {
        let v: Value = serde_json::json!({"a": 3, "b": null, "c": "x", "d": 1.5, "e": true, "f": -1, "o": {"k": 1}});
        let s = Section::new("text_config", &v);
        assert_eq!(s.usize("a").unwrap(), 3);
        assert_eq!(s.usize_or("b", 7).unwrap(), 7);
        assert_eq!(s.usize_or("zz", 8).unwrap(), 8);
        assert_eq!(s.f64_or("d", 0.0).unwrap(), 1.5);
        assert_eq!(s.f64_opt("b").unwrap(), None);
        assert!(s.bool_or("e", false).unwrap());
        assert_eq!(s.str_opt("c").unwrap(), Some("x"));
        assert_eq!(s.section("o", "text_config.o").unwrap().unwrap().usize("k").unwrap(), 1);
        let e = s.usize("b").unwrap_err().to_string();
        assert!(e.contains("text_config: missing field b"), "{e}");
        let e = s.usize("f").unwrap_err().to_string();
        assert!(e.contains("text_config: f must be a non-negative integer, got -1"), "{e}");
        assert!(s.usize("c").unwrap_err().to_string().contains("text_config: c"));
        assert!(s.f64_or("c", 0.0).unwrap_err().to_string().contains("must be a number"));
        assert!(s.bool_or("a", false).unwrap_err().to_string().contains("must be true or false"));
        assert!(s.str_opt("a").unwrap_err().to_string().contains("must be a string"));
        assert!(s.section("a", "x").unwrap_err().to_string().contains("must be an object"));
    }
}
