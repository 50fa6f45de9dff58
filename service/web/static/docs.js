"use strict";
// Swagger UI from this server's own copy. Its requests carry the CSRF header, so that
// "Try it out" works for a browser signed in by the dashboard's cookie.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  requestInterceptor: (request) => {
    request.headers["X-SGMIM-CSRF"] = "1";
    return request;
  },
});
