//! What a problem in a rules file looks like to whoever wrote the file: `FILE:LINE:COL:
//! message`, every problem at once, so one run of `fwctl check` shows all there is to fix.

use std::{fmt, io, path::PathBuf};

/// One problem, located. Displays as `FILE:LINE:COL: message` (or `FILE: message` when there is
/// no position).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The rules file, or a set file when the problem is inside one.
    pub file: PathBuf,
    /// 1-based.
    pub line: Option<usize>,
    /// 1-based, in characters.
    pub column: Option<usize>,
    /// Already carries the rule (`rule 2 ("ssh"): ...`) or set it concerns.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The rules file itself could not be read. The I/O error is part of the message rather
    /// than a `source()`, so error-chain printers do not repeat it.
    #[error("{}: cannot read: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    /// The file is not a valid rule set. Every problem found, in file order; never empty.
    #[error("{}", join_lines(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// The located problems (empty for [`ConfigError::Read`]).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid(diagnostics) => diagnostics,
        }
    }
}

fn join_lines(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
