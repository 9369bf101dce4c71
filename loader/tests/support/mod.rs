pub mod cli;
pub mod e2e;
pub mod packet;
pub mod topo;
