//! The web console (`GET /`): one HTML document with its stylesheet and scripts inline, built
//! from the files of `src/http/console/` embedded in the binary (no CDN, no build step). The
//! scripts read the JSON API (`/cluster`, `/charts`, `/tasks/search`, `/tasks/{id}/detail`) and
//! act through it (`console_api.rs`, `api.rs`); the page itself holds no data, so it is served
//! without a token, and the script asks for one when the API wants it (from `#token=` in the
//! link, else a password field; kept in the browser's session storage, never sent anywhere but
//! the `Authorization` header).
//!
//! Owns the assembly of the assets and the page's security headers: no framing (the actions are
//! one click plus a confirmation), scripts and styles only from the page itself, requests only to
//! this origin.

use std::sync::OnceLock;

use actix_web::{web, HttpResponse};

use super::HttpState;

const HTML: &str = include_str!("console/index.html");
const STYLE: &str = include_str!("console/console.css");
/// In load order: the core first (routing, API, dialogs), then the views.
const SCRIPTS: [&str; 5] = [
    include_str!("console/core.js"),
    include_str!("console/charts.js"),
    include_str!("console/overview.js"),
    include_str!("console/tasks.js"),
    include_str!("console/task.js"),
];

const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// The document with its assets inline (built once).
fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        // `</script` cannot occur inside the inline script (it would end it)
        let script = SCRIPTS.join("\n").replace("</script", "<\\/script");
        HTML.replacen("/*STYLE*/", STYLE, 1)
            .replacen("/*SCRIPT*/", &script, 1)
    })
}

/// `GET /`.
pub async fn console_page(state: web::Data<HttpState>) -> HttpResponse {
    let page = document()
        .replacen("/*NODE*/", &state.node.worker_id.to_string(), 1)
        .replacen(
            "/*HORIZON*/",
            &state.node.config.horizon_warning.as_secs_f64().to_string(),
            1,
        );
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Content-Security-Policy", CSP))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header(("Cache-Control", "no-store"))
        .body(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_has_every_asset_inline_and_nothing_external() {
        let doc = document();
        assert!(!doc.contains("/*STYLE*/") && !doc.contains("/*SCRIPT*/"));
        assert!(doc.contains("PG.views.task =") && doc.contains("PG.charts ="));
        assert!(doc.contains("--accent"), "the stylesheet is inline");
        assert!(
            !doc.contains("<script src") && !doc.contains("<link"),
            "no external asset"
        );
        // the one URL is the SVG namespace, a name rather than something fetched
        let rest = doc.replace("'http://www.w3.org/2000/svg'", "");
        assert!(
            !rest.contains("http://") && !rest.contains("https://"),
            "no CDN"
        );
        assert_eq!(doc.matches("</script>").count(), 1, "one script element");
    }
}
