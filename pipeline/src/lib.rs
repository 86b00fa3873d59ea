//! The delivery pipeline: pipeline files, steps in containers on the Docker
//! Engine, image build and push, deploys and the release records analytics
//! links metrics to.
//!
//! Not built yet; this crate holds the place in the workspace so the
//! boundaries in ARCHITECTURE.md are real from the start. Invariant: the
//! pipeline is the only crate that talks to Docker.
