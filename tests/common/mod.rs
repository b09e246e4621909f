pub mod fixtures;
pub mod scripts;
