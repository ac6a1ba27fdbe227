//! Typed errors of the core. The napi layer maps each variant to a stable
//! `code` string that the TypeScript side turns into `KvEppError`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// Block size outside `1..=1024`.
    InvalidBlockSize(u64),
    /// A caller-owned output buffer cannot hold the result.
    BufferTooSmall { needed: usize, got: usize },
    /// Parallel input arrays differ in length.
    LengthMismatch { left: usize, right: usize },
}

impl CoreError {
    /// Stable machine-readable code (mirrored by `KvEppErrorCode` in TypeScript).
    pub fn code(&self) -> &'static str {
        match self {
            CoreError::InvalidBlockSize(_) => "invalid_block_size",
            CoreError::BufferTooSmall { .. } => "buffer_too_small",
            CoreError::LengthMismatch { .. } => "length_mismatch",
        }
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::InvalidBlockSize(b) => {
                write!(f, "block size must be an integer in 1..=1024, got {b}")
            }
            CoreError::BufferTooSmall { needed, got } => {
                write!(f, "output buffer holds {got} hashes, {needed} needed")
            }
            CoreError::LengthMismatch { left, right } => {
                write!(f, "parallel arrays differ in length: {left} vs {right}")
            }
        }
    }
}

impl std::error::Error for CoreError {}
