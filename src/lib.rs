pub mod pgcluster;
