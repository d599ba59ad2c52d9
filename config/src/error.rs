//! Errors of reading a configuration. Each problem carries the TOML path and the position in the
//! text, so `nrdot config validate` and SIGHUP reloads can point at the exact character.
use std::fmt;

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Dotted TOML path, e.g. `pool[1].server[0].address`.
    pub path: String,
    /// 1-based line of the offending text.
    pub line: usize,
    /// 1-based column (in characters) of the offending text.
    pub column: usize,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl ValidationError {
    /// Renders `file:line:column: path: message`, the shape compilers and editors understand.
    pub fn render(&self, file: &str) -> String {
        if self.path.is_empty() {
            format!("{file}:{}:{}: {}", self.line, self.column, self.message)
        } else {
            format!(
                "{file}:{}:{}: {}: {}",
                self.line, self.column, self.path, self.message
            )
        }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render("<config>"))
    }
}

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The text is valid TOML but breaks the schema; every problem is listed.
    #[error("{} problem(s) in configuration", .0.len())]
    Invalid(Vec<ValidationError>),
}

impl ConfigError {
    /// All problems, in file order.
    pub fn problems(&self) -> &[ValidationError] {
        match self {
            ConfigError::Invalid(v) => v,
        }
    }

    /// One line per problem, each `file:line:column: path: message`.
    pub fn render(&self, file: &str) -> String {
        let mut out = String::new();
        for p in self.problems() {
            out.push_str(&p.render(file));
            out.push('\n');
        }
        out
    }
}
