//! The OpenAPI document's frame: title, tags, the bearer scheme every route needs unless it
//! says otherwise, and the table of error codes with their HTTP status (from the one
//! exhaustive mapping). The routes add their own paths.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as OpenApiDoc, SecurityRequirement};
use utoipa::{Modify, OpenApi};

use super::{
    status_of, MAX_BODY, MAX_ETHEREUM_BODY, MAX_IMPORT_BODY, MAX_PSBT_BODY, MAX_THRESHOLD_SIGN_BODY,
};
use crate::error::ErrorCode;
use custos_cloud_api::{ApiErrorBody, ApiErrorDetail, REQUEST_ERROR_CODES};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Custos cloud API",
        description = "Key custody (US 2020/0259646 A1): wallets, admin-approved signing requests, clusters, threshold keys signed across clusters.",
        license(name = "Apache-2.0")
    ),
    components(schemas(ApiErrorBody, ApiErrorDetail)),
    modifiers(&Security, &ErrorCodes),
    tags(
        (name = "wallets", description = "Wallets (BIP-32 root keys held by a cluster's TEEs)"),
        (name = "requests", description = "Requests, their admin approvals and lifecycle"),
        (name = "clusters", description = "Clusters, their status and key audits"),
        (name = "governance", description = "Cluster governance: members, governors and revocations, each change a request the governors approve (issue 12)"),
        (name = "threshold", description = "Threshold keys (t-of-n over clusters): distributed key generation, share imports and signing sessions"),
        (name = "meta", description = "This description"),
    )
)]
pub(super) struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut OpenApiDoc) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token of the server's configuration. Each operation names \
                         the one scope it needs in its security requirement, its \
                         `x-custos-scope` and its text.",
                    ))
                    .build(),
            ),
        );
        // Every route needs the token unless it says otherwise (the OpenAPI document).
        doc.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

struct ErrorCodes;

impl Modify for ErrorCodes {
    fn modify(&self, doc: &mut OpenApiDoc) {
        let mut text = doc.info.description.clone().unwrap_or_default();
        text.push_str(&format!(
            "\n\nRequest bodies are JSON of at most {MAX_BODY} bytes ({MAX_THRESHOLD_SIGN_BODY} \
             for threshold signing, {MAX_IMPORT_BODY} for threshold key imports, \
             {MAX_PSBT_BODY} for PSBT signing, {MAX_ETHEREUM_BODY} for Ethereum signing; larger ones \
             get `body_too_large`): every body the schemas below allow fits.\n\n\
             Access: every API token holds scopes (`read`: every GET; `request`: create \
             requests and resubmit failed ones; `approve`: add approvals; `operate`: audits \
             and presignatures; `administer`: token, tenant and governance administration), \
             belongs to one tenant, and has a rate limit. A token without the scope a route \
             needs gets 403 `scope_missing`; a token over its rate limit gets 429 \
             `rate_limited` with `Retry-After` (seconds). Requests, wallets and threshold \
             keys belong to the tenant whose token made them (the request that made them): \
             another tenant's are unknown (404) and listed nowhere.\n\n\
             Errors are `{{\"error\":{{\"code\":\"...\",\"message\":\"...\"}}}}`.\n\n\
             | code | HTTP | meaning |\n|---|---|---|\n",
        ));
        for code in ErrorCode::ALL {
            text.push_str(&format!(
                "| `{code}` | {} | {} |\n",
                status_of(code).as_u16(),
                code.description()
            ));
        }
        text.push_str(
            "\nA request that was refused or failed carries `error.code`, one of the above or:\n\n",
        );
        for (code, meaning) in REQUEST_ERROR_CODES {
            text.push_str(&format!("* `{code}`: {meaning}\n"));
        }
        doc.info.description = Some(text);
    }
}
