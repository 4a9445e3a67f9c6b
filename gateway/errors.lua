-- Shapes REST traffic at the edge; placed before the gRPC-JSON transcoder.
-- Requests:
-- * Every request (REST and gRPC): an `x-request-id` that is not a short safe token is dropped, so
--   the service's generated id is the one logged, sent upstream and answered with.
-- * REST only (what Envoy itself does not treat as gRPC, so also grpc-web and the like): headers that
--   gRPC would read itself (grpc-*, *-bin) or whose names gRPC metadata cannot carry are dropped; a
--   path that is not UTF-8 once percent-decoded is a 400, and one with an empty segment (`//`, a
--   trailing `/`, which the transcoder would ignore) a 404, so none of them reaches the service as
--   something else. A body whose declared Content-Length is over its route's limit
--   (BULK_MAX_REQUEST_BYTES on the bulk routes, MAX_REQUEST_BYTES elsewhere) is a 413 at once; the
--   buffer filter after this one holds the same limits for bodies of undeclared length (chunked).
-- * Every request: a header value that gRPC metadata cannot carry (anything but printable ASCII) is
--   a 400 naming the header (never its value), before the service sees it.
-- Responses run after the transcoder's (REST only; native gRPC responses are untouched):
-- * Service errors: the service puts the rendered error JSON in the ERROR_BODY_HEADER response
--   header and the HTTP status it wants in ERROR_STATUS_HEADER; this swaps them in as body and status, so
--   a provider's 409 stays a 409 (the gRPC code alone would say 400).
-- * Envoy's own 400s (the transcoder's, ours) get a message about the request the caller sent, not
--   about protobuf types.
-- * gRPC-internal headers and trailers are removed.
-- * CancelMany streams (the service sends STREAM_HEADER: ndjson): each line is passed on as it comes
--   (no buffering), typed `application/x-ndjson`; in an item's `error` the transcoder omits unset
--   optional fields, so `code` and `param` are put back as null, as in the single cancel's body.

-- The envelope's constants (ERROR_BODY_HEADER, ERROR_STATUS_HEADER, STREAM_HEADER, ITEM_ERROR,
-- ERROR_KEYS, NULLABLE_ERROR_KEYS) are generated from service/edge/envelope.py, the request-id rule
-- (REQUEST_ID_HEADER, REQUEST_ID_MAX_LENGTH, REQUEST_ID_UNSAFE) from service/infra/observability.py,
-- BULK_PATH from the proto's route of CancelMany, ROUTES (every REST route from the proto's
-- google.api.http bindings: {Lua pattern, method, request type}), and MATCHING_PATH,
-- BULK_MAX_REQUEST_BYTES and MAX_REQUEST_BYTES come from gateway/render.py, which puts them all in
-- place of the next line and inlines the result into Envoy's config.
--@ENVELOPE@--

-- Envoy's rule (Grpc::Common::hasGrpcContentType): exactly application/grpc or application/grpc+...
local function is_grpc(ctype)
  return ctype ~= nil and (ctype == "application/grpc" or string.sub(ctype, 1, 17) == "application/grpc+")
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

-- Envoy's local-reply formats (gateway/render.py) put this text into the route's error envelope.
local function refuse(handle, status, message)
  handle:respond({[":status"] = status, ["content-type"] = "text/plain"}, message)
end

-- The route a REST request's path and method name, or nil and the methods its path takes.
local function route_of(method, path)
  local allowed, seen = {}, {}
  for _, route in ipairs(ROUTES) do
    if string.match(path, route[1]) then
      if route[2] == method then
        return route, nil
      end
      if not seen[route[2]] then
        seen[route[2]] = true
        allowed[#allowed + 1] = route[2]
      end
    end
  end
  return nil, allowed
end

-- The rule service/infra/observability.py applies to direct gRPC callers, generated from it.
local function safe_request_id(id)
  return #id >= 1 and #id <= REQUEST_ID_MAX_LENGTH and string.find(id, REQUEST_ID_UNSAFE) == nil
end

-- gRPC metadata values are printable ASCII (a `-bin` value is base64 of that); grpc-python logs
-- any other byte with the whole value and a traceback. The name of the first such header, or nil.
local function unprintable_header(headers)
  for key, value in pairs(headers) do
    if string.sub(key, 1, 1) ~= ":" and string.find(value, "[^\32-\126]") then
      return key
    end
  end
  return nil
end

local function refuse_unprintable(handle, headers)
  local bad = unprintable_header(headers)
  if bad ~= nil then
    refuse(handle, "400", "header '" .. string.sub(bad, 1, 64) .. "' has a value that is not printable ASCII")
  end
  return bad ~= nil
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local rid = headers:get(REQUEST_ID_HEADER)
  if rid ~= nil and not safe_request_id(rid) then
    headers:remove(REQUEST_ID_HEADER)
  end
  headers:remove(REQUEST_TYPE_HEADER)  -- ours to set, below
  if is_grpc(headers:get("content-type")) then
    refuse_unprintable(handle, headers)
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
  local target = headers:get(":path")
  if target == nil then
    return
  end
  local path = string.match(target, "^[^?]*")
  -- The transcoder matches `/v1/batches/a/cancel/` as `/v1/batches/a/cancel`; the service would
  -- then not recognise the path it was called with. One spelling per route.
  if string.find(path, "//", 1, true) or (#path > 1 and string.sub(path, -1) == "/") then
    refuse(handle, "404", "no route")
    return
  end
  -- A route's path with another method: 405 naming the methods it takes. Envoy's local replies
  -- (gateway/render.py) name the request type of a cancel route in their error bodies, and only there.
  local route, allowed = route_of(headers:get(":method"), path)
  if route == nil and #allowed > 0 then
    handle:respond(
      {[":status"] = "405", ["allow"] = table.concat(allowed, ", "), ["content-type"] = "text/plain"},
      "method not allowed")
    return
  end
  if route ~= nil and route[3] ~= "" then
    headers:add(REQUEST_TYPE_HEADER, route[3])
  end
  if refuse_unprintable(handle, headers) then
    return
  end
  local length = tonumber(headers:get("content-length") or "")
  local limit = (path == BULK_PATH or path == MATCHING_PATH) and BULK_MAX_REQUEST_BYTES or MAX_REQUEST_BYTES
  if length ~= nil and length > limit then
    refuse(handle, "413", "request body is too large")
    return
  end
  if string.find(target, "%%[89A-Fa-f]%x") then
    local decoded = string.gsub(target, "%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
    if not valid_utf8(decoded) then
      refuse(handle, "400", "the URL is not valid UTF-8 once percent-decoded")
    end
  end
end

-- What the transcoder says about a request body or query it cannot read, for a REST caller. `m` is
-- the message as it sits in the JSON body (still escaped); so is the answer. nil: not one of those.
local SCALAR_TYPES = {
  TYPE_STRING = "a string", TYPE_BOOL = "true or false", TYPE_INT32 = "an integer", TYPE_INT64 = "an integer",
  TYPE_UINT32 = "an integer", TYPE_UINT64 = "an integer", TYPE_DOUBLE = "a number", TYPE_FLOAT = "a number",
}

local function quoted(field)
  return field ~= "" and ("'" .. field .. "'") or "a field"
end

local function plain_message(m)
  m = string.gsub(string.gsub(m, "\\u0022", '\\"'), "\\u000a", "\\n")
  local internal = string.find(m, "grpc_json_transcode_failure", 1, true) or string.find(m, "batchgate%.v1%.")
    or string.find(m, "lua_response", 1, true)
  m = string.gsub(m, " %([%a_]*grpc_json_transcode_failure{[%u_]*}%)$", "")
  m = string.gsub(m, " %(lua_response%)$", "")
  local field = string.match(m, '^Could not find field \\"(.-)\\" in the type')
  if field then
    return "unknown query parameter " .. quoted(field)
  end
  field = string.match(m, '^Encountered a non%-leaf field \\"(.-)\\" that is not a message')
  if field then
    return "query parameter " .. quoted(field) .. " has no sub-fields"
  end
  local value, kind
  field, value, kind = string.match(m, "^(.-): invalid value (.-) for type (.+)$")
  if field then
    if string.match(value, "^Starting an object") then
      -- An object for a scalar field: `kind` is then that field's own name, and `field` the path of
      -- the message holding it (empty at the top), so the field's type is not in the message.
      return quoted(field ~= "" and (field .. "." .. kind) or kind) .. " must not be an object"
    end
    if string.match(kind, "^type%.googleapis%.com/") then
      return quoted(field) .. " must be an object, not " .. value
    end
    return quoted(field) .. " must be " .. (SCALAR_TYPES[kind] or "of another type") .. ", not " .. value
  end
  field = string.match(m, "^(.-): Proto field is not repeating, cannot start list%.")
  if field then
    return quoted(field) .. " must be a single value, not a list"
  end
  if string.find(m, "Root element must be a message", 1, true) then
    return "the request body must be a JSON object"
  end
  -- The JSON parser's own words, without the lines that echo the body back.
  local first = string.match(m, "^(.-)\\n")
  if first and internal then
    return "the request body is not valid JSON: " .. first
  end
  return internal and m or nil
end

-- Replaces the first `"message":"..."` string of a JSON body; nil when it is unchanged.
local function rewrite_message(body)
  local _, start = string.find(body, '"message":"', 1, true)
  if start == nil then
    return nil
  end
  local i = start + 1
  while i <= #body do
    local c = string.sub(body, i, i)
    if c == "\\" then
      i = i + 2
    elseif c == '"' then
      break
    else
      i = i + 1
    end
  end
  local plain = plain_message(string.sub(body, start + 1, i - 1))
  if plain == nil then
    return nil
  end
  return string.sub(body, 1, start) .. plain .. string.sub(body, i)
end

local function set_body(handle, headers, body)
  headers:replace("content-length", tostring(#body))
  handle:body(true):setBytes(body)
end

-- One NDJSON line of a CancelMany stream. Keys print in proto field order (ERROR_KEYS) and every
-- quote inside a JSON string is escaped, so `,"<key>":` and `},"extra_fields":{` found after the
-- inner error's first key are that object's own keys and its end. Each nullable key that is
-- missing goes back as null before the next key present after it (or at the end).
local function null_missing_error_fields(line)
  local _, item = string.find(line, ITEM_ERROR, 1, true)
  if item == nil then return line end
  local _, inner = string.find(line, '"error":{"' .. ERROR_KEYS[1] .. '":', item, true)
  if inner == nil then return line end
  local close = string.find(line, '},"extra_fields":{', inner, true)
  if close == nil then return line end
  local fields = string.sub(line, inner + 1, close - 1)
  for _, key in ipairs(NULLABLE_ERROR_KEYS) do
    if string.find(fields, ',"' .. key .. '":', 1, true) == nil then
      local position, after = nil, false
      for _, other in ipairs(ERROR_KEYS) do
        if after and position == nil then
          position = string.find(fields, ',"' .. other .. '":', 1, true)
        end
        if other == key then after = true end
      end
      if position == nil then
        fields = fields .. ',"' .. key .. '":null'
      else
        fields = string.sub(fields, 1, position - 1) .. ',"' .. key .. '":null' .. string.sub(fields, position)
      end
    end
  end
  return string.sub(line, 1, inner) .. fields .. string.sub(line, close)
end

local function shape_stream(handle)
  for chunk in handle:bodyChunks() do
    local size = chunk:length()
    if size > 0 then
      local text = chunk:getBytes(0, size)
      if string.find(text, ITEM_ERROR, 1, true) ~= nil then
        local lines = {}
        for line in string.gmatch(text, "[^\n]*\n?") do
          if line ~= "" then lines[#lines + 1] = null_missing_error_fields(line) end
        end
        chunk:setBytes(table.concat(lines))
      end
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
  local body = headers:get(ERROR_BODY_HEADER)
  if headers:get(STREAM_HEADER) ~= nil then
    headers:remove(STREAM_HEADER)
    headers:replace("content-type", "application/x-ndjson")
    shape_stream(handle)
  elseif body ~= nil then
    local status = headers:get(ERROR_STATUS_HEADER)
    headers:remove(ERROR_BODY_HEADER)
    headers:remove(ERROR_STATUS_HEADER)
    if status ~= nil then
      headers:replace(":status", status)
    end
    headers:replace("content-type", "application/json")
    set_body(handle, headers, body)
  elseif headers:get(":status") == "400" then
    -- Headers cannot change once the body is read: let Envoy frame the rewritten body.
    headers:remove("content-length")
    local reply = handle:body(true)
    local rewritten = rewrite_message(reply:getBytes(0, reply:length()))
    if rewritten ~= nil then
      reply:setBytes(rewritten)
    end
  end
  -- Over HTTP/2 the service's gRPC status would follow as trailers.
  if handle:streamInfo():protocol() == "HTTP/2" then
    local trailers = handle:trailers()
    if trailers ~= nil then
      local names = {}
      for key, _ in pairs(trailers) do
        names[#names + 1] = key
      end
      for _, key in ipairs(names) do
        trailers:remove(key)
      end
    end
  end
end
