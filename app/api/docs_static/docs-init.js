// Start Swagger UI on this server's OpenAPI document. A static file because the CSP forbids inline scripts.
// validatorUrl null: no badge request to the public validator; the page makes no third-party requests.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: new URL("../api/bg/openapi.json", window.location.href).toString(),
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
