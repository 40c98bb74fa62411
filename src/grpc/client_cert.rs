//! The client certificate's subject common name, which names the API key a
//! mutual-TLS caller acts as. This build serves no TLS, so there is never a
//! client certificate.

/// The CN of the first client certificate of the connection, if any.
pub fn common_name(_extensions: &http::Extensions) -> Option<String> {
    None
}
