// A small HTTP/1.1 client over plain TCP, enough to call an OpenAI-compatible endpoint (the
// MMBench LLM judge) on a local server or gateway: one POST per connection (Connection: close),
// connect/read timeouts and an overall deadline, Content-Length, chunked or read-to-close bodies. No TLS: an https URL
// is a UsageError that says to put an http gateway in front.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "common/error.h"

namespace mgm::eval {

struct HttpUrl {
  std::string host;  // without brackets for IPv6 literals
  int port = 80;
  std::string target;  // path + query, at least "/"
  std::string text;    // the URL as given, for messages
};

// "http://host[:port][/path][?query]"; UsageError naming the URL for https, other schemes,
// user info, a bad port or a missing host.
HttpUrl parse_http_url(const std::string& url);

struct HttpResponse {
  int status = 0;
  std::string reason;
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased, in order
  std::string body;                                          // de-chunked
  // The first value of a header (name in lower case), "" when absent.
  std::string header(const std::string& lower_name) const;
};

// A transport failure: the connection could not be made, timed out, was cut, or the reply was
// not HTTP. The message names the URL. (A non-2xx status is a response, not an HttpError.)
class HttpError : public Error {
 public:
  explicit HttpError(const std::string& what) : Error(what) {}
};

struct HttpRequestOptions {
  // Seconds allowed for the connection and for each wait on the socket (as `requests` applies
  // its timeout to connect and to every read), > 0.
  double timeout_s = 60;
  // Seconds the whole request may take, connect to last byte, > 0 (0: timeout_s): a server that
  // drips a byte at a time, or sends headers without end, cannot keep a call alive past it.
  double deadline_s = 0;
  size_t max_body_bytes = size_t{64} << 20;  // larger replies are an HttpError (headers: 64 KiB)
};

// POSTs `body` with the given extra headers (Host, Content-Length and Connection are added).
HttpResponse http_post(const HttpUrl& url, const std::string& body,
                       const std::vector<std::pair<std::string, std::string>>& headers,
                       const HttpRequestOptions& opts);

// "HTTP <status> <reason>: <first non-empty line of the body, at most 200 chars>".
std::string describe_http_status(const HttpResponse& r);

// Decodes a chunked transfer-encoded body (chunk extensions and trailers skipped). Throws
// HttpError on a malformed size line or a truncated chunk; exposed for tests.
std::string decode_chunked(const std::string& raw, const std::string& what);

}  // namespace mgm::eval
