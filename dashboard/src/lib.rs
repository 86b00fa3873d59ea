//! Server-rendered pages for people. Only this crate renders HTML.
//!
//! For now the home page: the projects on this instance, their public write
//! keys, and where to send events. Read keys are secrets and never rendered.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use handlebars::Handlebars;
use leanloop_control::ControlPlane;
use serde::Serialize;
use std::sync::Arc;

const HOME: &str = include_str!("../templates/home.hbs");

#[derive(Clone)]
struct Pages {
    control: Arc<ControlPlane>,
    templates: Arc<Handlebars<'static>>,
}

#[derive(Serialize)]
struct ProjectRow {
    id: i64,
    name: String,
    write_key: String,
}

pub fn router(control: Arc<ControlPlane>) -> Router {
    let mut templates = Handlebars::new();
    templates.set_strict_mode(true);
    templates.register_template_string("home", HOME).expect("home template is valid");
    let pages = Pages { control, templates: Arc::new(templates) };
    Router::new().route("/", get(home)).with_state(pages)
}

async fn home(State(pages): State<Pages>) -> Response {
    let projects = match pages.control.projects() {
        Ok(projects) => projects,
        Err(err) => {
            return leanloop_core::ApiError::from_class(leanloop_core::ErrorClass::Internal, err.to_string())
                .into_response()
        }
    };
    let rows: Vec<ProjectRow> =
        projects.into_iter().map(|p| ProjectRow { id: p.id, name: p.name, write_key: p.write_key }).collect();
    match pages.templates.render("home", &serde_json::json!({ "projects": rows })) {
        Ok(html) => Html(html).into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, format!("rendering failed: {err}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_renders_projects_and_escapes_names() {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_template_string("home", HOME).unwrap();
        let html = hb
            .render(
                "home",
                &serde_json::json!({ "projects": [{ "id": 1, "name": "<b>Shop</b>", "write_key": "llw_x" }] }),
            )
            .unwrap();
        assert!(html.contains("&lt;b&gt;Shop&lt;/b&gt;"));
        assert!(html.contains("llw_x"));
        assert!(!html.contains("llr_"));
    }
}
