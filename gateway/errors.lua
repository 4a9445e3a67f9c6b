-- Shapes REST answers at the edge. Runs on responses after the gRPC-JSON transcoder.
-- * Service errors: the service puts the rendered Bifrost error JSON in the `x-bf-error-body`
--   response header and the HTTP status it wants in `x-bf-status`; this swaps them in as body and
--   status, so a provider's 409 stays a 409 (the gRPC code alone would say 400).
-- * Transcoded JSON answers lose the gRPC-internal headers. Native gRPC responses are untouched.
function envoy_on_response(handle)
  local headers = handle:headers()
  local ctype = headers:get("content-type")
  if ctype == nil or string.sub(ctype, 1, 16) == "application/grpc" then
    return
  end
  headers:remove("grpc-status")
  headers:remove("grpc-message")
  headers:remove("grpc-accept-encoding")
  headers:remove("grpc-status-details-bin")
  local body = headers:get("x-bf-error-body")
  if body == nil then
    return
  end
  local status = headers:get("x-bf-status")
  headers:remove("x-bf-error-body")
  headers:remove("x-bf-status")
  if status ~= nil then
    headers:replace(":status", status)
  end
  headers:replace("content-type", "application/json")
  headers:replace("content-length", tostring(#body))
  handle:body(true):setBytes(body)
end
