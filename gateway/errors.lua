-- Shapes REST traffic at the edge; placed before the gRPC-JSON transcoder.
-- Requests (REST only): headers that gRPC would read itself (grpc-*, *-bin) or whose names gRPC
-- metadata cannot carry are dropped, and a path that is not UTF-8 once percent-decoded gets a 400
-- here, so none of them can make the service's gRPC core refuse the call with a 500.
-- Responses run after the transcoder's:
-- * Service errors: the service puts the rendered Bifrost error JSON in the `x-bf-error-body`
--   response header and the HTTP status it wants in `x-bf-status`; this swaps them in as body and
--   status, so a provider's 409 stays a 409 (the gRPC code alone would say 400).
-- * Transcoded JSON answers lose the gRPC-internal headers. Native gRPC responses are untouched.
local function is_grpc(ctype)
  return ctype ~= nil and string.sub(ctype, 1, 16) == "application/grpc"
end

-- UTF-8 as protobuf strings require it (no overlongs, surrogates or code points past U+10FFFF).
local function valid_utf8(s)
  local i, n = 1, #s
  while i <= n do
    local c = string.byte(s, i)
    local len, lo, hi = 1, 0x80, 0xBF
    if c < 0x80 then len = 1
    elseif c >= 0xC2 and c <= 0xDF then len = 2
    elseif c >= 0xE0 and c <= 0xEF then
      len = 3
      if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F end
    elseif c >= 0xF0 and c <= 0xF4 then
      len = 4
      if c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
    else
      return false
    end
    for j = i + 1, i + len - 1 do
      local cc = string.byte(s, j)
      if cc == nil or cc < 0x80 or cc > 0xBF or (j == i + 1 and (cc < lo or cc > hi)) then return false end
    end
    i = i + len
  end
  return true
end

local BAD_PATH = '{"is_bifrost_error":true,"status_code":400,"error":{"type":"invalid_request_error",' ..
  '"code":"invalid_request","message":"the URL is not valid UTF-8 once percent-decoded","param":null},' ..
  '"extra_fields":{"provider":"","request_type":"batch_cancel"}}'

function envoy_on_request(handle)
  local headers = handle:headers()
  if is_grpc(headers:get("content-type")) then
    return
  end
  local drop = {}
  for key, _ in pairs(headers) do
    if string.sub(key, 1, 1) ~= ":" and (string.sub(key, 1, 5) == "grpc-" or string.sub(key, -4) == "-bin"
        or string.find(key, "[^%w%-_%.]")) then
      drop[#drop + 1] = key
    end
  end
  for _, key in ipairs(drop) do
    headers:remove(key)
  end
  local path = headers:get(":path")
  if path ~= nil and string.find(path, "%%[89A-Fa-f]%x") then
    local decoded = string.gsub(path, "%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
    if not valid_utf8(decoded) then
      handle:respond({[":status"] = "400", ["content-type"] = "application/json"}, BAD_PATH)
    end
  end
end

function envoy_on_response(handle)
  local headers = handle:headers()
  local ctype = headers:get("content-type")
  if ctype == nil or is_grpc(ctype) then
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
