#include "eval/scoring/http_client.h"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>

#include "common/strings.h"

namespace mgm::eval {
namespace {

std::string lower_ascii(std::string s) {
  for (auto& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}

std::string trim_ows(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && (s[b] == ' ' || s[b] == '\t')) ++b;
  while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t' || s[e - 1] == '\r')) --e;
  return s.substr(b, e - b);
}

struct Socket {
  int fd = -1;
  ~Socket() {
    if (fd >= 0) ::close(fd);
  }
};

int timeout_ms(double s) {
  const double ms = std::ceil(s * 1000.0);
  return ms > 2e9 ? 2000000000 : static_cast<int>(ms);
}

using Clock = std::chrono::steady_clock;

// The per-wait timeout and the request's overall deadline.
struct Limits {
  double timeout_s;
  double deadline_s;
  Clock::time_point deadline;
  // Seconds the next wait may take: the per-wait timeout, cut to what is left of the deadline.
  double wait_s() const {
    const double left = std::chrono::duration<double>(deadline - Clock::now()).count();
    return std::max(0.0, std::min(timeout_s, left));
  }
  bool past_deadline() const { return Clock::now() >= deadline; }
  // The message for a wait that ran out: the deadline's when it is what ended it.
  std::string timed_out(const std::string& doing) const {
    return past_deadline()
               ? str_cat("no complete response within the request deadline of ", deadline_s, " s (", doing, ")")
               : str_cat("timed out after ", timeout_s, " s ", doing);
  }
};

// Waits for `events` on fd; false on timeout.
bool wait_fd(int fd, short events, double timeout_s) {
  pollfd p{fd, events, 0};
  for (;;) {
    const int r = ::poll(&p, 1, timeout_ms(timeout_s));
    if (r > 0) return true;
    if (r == 0) return false;
    if (errno != EINTR) return false;
  }
}

void connect_to(Socket& s, const HttpUrl& url, const Limits& lim) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(url.port);
  const int g = ::getaddrinfo(url.host.c_str(), port.c_str(), &hints, &res);
  if (g != 0)
    throw HttpError(str_cat(url.text, ": cannot resolve host '", url.host, "': ", gai_strerror(g)));
  std::string last = "no address";
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      last = std::strerror(errno);
      continue;
    }
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
    int rc = ::connect(fd, a->ai_addr, a->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      if (!wait_fd(fd, POLLOUT, lim.wait_s())) {
        last = lim.timed_out("connecting");
        ::close(fd);
        continue;
      }
      int err = 0;
      socklen_t len = sizeof err;
      ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
      rc = err == 0 ? 0 : -1;
      errno = err;
    }
    if (rc != 0) {
      last = std::strerror(errno);
      ::close(fd);
      continue;
    }
    s.fd = fd;
    ::freeaddrinfo(res);
    return;
  }
  ::freeaddrinfo(res);
  throw HttpError(str_cat(url.text, ": cannot connect to ", url.host, ":", url.port, ": ", last));
}

void send_all(const Socket& s, const std::string& data, const HttpUrl& url, const Limits& lim) {
  size_t off = 0;
  while (off < data.size()) {
    const ssize_t n = ::send(s.fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n > 0) {
      off += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (lim.past_deadline() || !wait_fd(s.fd, POLLOUT, lim.wait_s()))
        throw HttpError(str_cat(url.text, ": ", lim.timed_out("sending the request")));
      continue;
    }
    throw HttpError(str_cat(url.text, ": sending the request failed: ", std::strerror(errno)));
  }
}

// Incremental chunked decoding: true and the body in *out once the terminating chunk (and the
// trailer section) is in `raw`; false when more bytes are needed.
bool try_decode_chunked(const std::string& raw, std::string* out, const std::string& what) {
  out->clear();
  size_t pos = 0;
  for (;;) {
    const size_t eol = raw.find('\n', pos);
    if (eol == std::string::npos) {
      if (raw.size() - pos > 1024)
        throw HttpError(str_cat(what, ": malformed chunked body (chunk-size line too long)"));
      return false;
    }
    std::string line = raw.substr(pos, eol - pos);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const size_t semi = line.find(';');  // chunk extensions are ignored
    const std::string hex = trim_ows(semi == std::string::npos ? line : line.substr(0, semi));
    if (hex.empty() || hex.size() > 15 ||
        hex.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos)
      throw HttpError(str_cat(what, ": malformed chunked body (bad chunk size '", line, "')"));
    const size_t size = std::stoull(hex, nullptr, 16);
    pos = eol + 1;
    if (size == 0) {
      // Trailer fields until an empty line.
      for (;;) {
        const size_t e = raw.find('\n', pos);
        if (e == std::string::npos) return false;
        const bool empty = e == pos || (e == pos + 1 && raw[pos] == '\r');
        pos = e + 1;
        if (empty) return true;
      }
    }
    if (raw.size() < pos + size) return false;
    out->append(raw, pos, size);
    pos += size;
    // CRLF (or LF) after the chunk data.
    if (raw.size() < pos + 1) return false;
    if (raw[pos] == '\r') {
      if (raw.size() < pos + 2) return false;
      if (raw[pos + 1] != '\n')
        throw HttpError(str_cat(what, ": malformed chunked body (no CRLF after a chunk)"));
      pos += 2;
    } else if (raw[pos] == '\n') {
      pos += 1;
    } else {
      throw HttpError(str_cat(what, ": malformed chunked body (chunk longer than its size)"));
    }
  }
}

struct Head {
  HttpResponse resp;
  size_t body_start = 0;
};

// Parses the status line and headers when `buf` holds the whole head; false otherwise.
bool parse_head(const std::string& buf, Head* h, const std::string& what) {
  size_t end = buf.find("\r\n\r\n");
  size_t sep = 4;
  const size_t lf = buf.find("\n\n");
  if (lf != std::string::npos && (end == std::string::npos || lf < end)) {
    end = lf;
    sep = 2;
  }
  if (end == std::string::npos) {
    if (buf.size() > (size_t{64} << 10))
      throw HttpError(str_cat(what, ": response headers larger than 64 KiB"));
    return false;
  }
  const std::string head = buf.substr(0, end);
  h->body_start = end + sep;
  std::vector<std::string> lines;
  size_t p = 0;
  while (p <= head.size()) {
    size_t e = head.find('\n', p);
    if (e == std::string::npos) e = head.size();
    std::string l = head.substr(p, e - p);
    if (!l.empty() && l.back() == '\r') l.pop_back();
    lines.push_back(l);
    p = e + 1;
  }
  const std::string& st = lines[0];
  if (st.rfind("HTTP/", 0) != 0 || st.size() < 12 || st[8] != ' ')
    throw HttpError(str_cat(what, ": not an HTTP response (status line '", st.substr(0, 80), "')"));
  const std::string code = st.substr(9, 3);
  if (code.find_first_not_of("0123456789") != std::string::npos)
    throw HttpError(str_cat(what, ": malformed status line '", st.substr(0, 80), "'"));
  h->resp.status = std::stoi(code);
  h->resp.reason = st.size() > 13 ? st.substr(13) : "";
  for (size_t i = 1; i < lines.size(); ++i) {
    const size_t colon = lines[i].find(':');
    if (colon == std::string::npos) continue;  // tolerated, as most clients do
    h->resp.headers.push_back(
        {lower_ascii(trim_ows(lines[i].substr(0, colon))), trim_ows(lines[i].substr(colon + 1))});
  }
  return true;
}

}  // namespace

std::string HttpResponse::header(const std::string& lower_name) const {
  for (const auto& [k, v] : headers)
    if (k == lower_name) return v;
  return "";
}

HttpUrl parse_http_url(const std::string& url) {
  HttpUrl u;
  u.text = url;
  const size_t scheme_end = url.find("://");
  if (scheme_end == std::string::npos)
    throw UsageError(str_cat("'", url, "' is not a URL (expected http://host[:port]/path)"));
  const std::string scheme = lower_ascii(url.substr(0, scheme_end));
  if (scheme == "https")
    throw UsageError(str_cat("'", url,
                             "': https is not supported; run the judge behind a plain-http "
                             "endpoint (a local server such as vLLM, or an http gateway/proxy)"));
  if (scheme != "http")
    throw UsageError(str_cat("'", url, "': unsupported scheme '", scheme, "' (expected http)"));
  const std::string rest = url.substr(scheme_end + 3);
  const size_t slash = rest.find_first_of("/?#");
  std::string authority = rest.substr(0, slash);
  u.target = slash == std::string::npos ? "/" : rest.substr(slash);
  if (!u.target.empty() && u.target[0] == '?') u.target = "/" + u.target;
  const size_t hash = u.target.find('#');
  if (hash != std::string::npos) u.target.resize(hash);
  if (u.target.empty()) u.target = "/";
  if (authority.find('@') != std::string::npos)
    throw UsageError(str_cat("'", url, "': user info in the URL is not supported"));
  std::string port;
  if (!authority.empty() && authority[0] == '[') {
    const size_t close = authority.find(']');
    if (close == std::string::npos)
      throw UsageError(str_cat("'", url, "': unterminated IPv6 address"));
    u.host = authority.substr(1, close - 1);
    const std::string after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') throw UsageError(str_cat("'", url, "': malformed host"));
      port = after.substr(1);
    }
  } else {
    const size_t colon = authority.rfind(':');
    u.host = authority.substr(0, colon);
    if (colon != std::string::npos) port = authority.substr(colon + 1);
  }
  if (u.host.empty()) throw UsageError(str_cat("'", url, "': no host"));
  if (!port.empty()) {
    if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos ||
        std::stoi(port) < 1 || std::stoi(port) > 65535)
      throw UsageError(str_cat("'", url, "': bad port '", port, "'"));
    u.port = std::stoi(port);
  }
  return u;
}

std::string decode_chunked(const std::string& raw, const std::string& what) {
  std::string out;
  if (!try_decode_chunked(raw, &out, what))
    throw HttpError(str_cat(what, ": chunked body ends before its last chunk"));
  return out;
}

HttpResponse http_post(const HttpUrl& url, const std::string& body,
                       const std::vector<std::pair<std::string, std::string>>& headers,
                       const HttpRequestOptions& opts) {
  MGM_CHECK(opts.timeout_s > 0, "http: timeout must be positive");
  MGM_CHECK(opts.deadline_s >= 0, "http: deadline must not be negative");
  Limits lim{opts.timeout_s, opts.deadline_s > 0 ? opts.deadline_s : opts.timeout_s, {}};
  // Clamped to 30 years: an enormous or infinite value must not overflow the clock.
  lim.deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                    std::chrono::duration<double>(std::min(lim.deadline_s, 1e9)));
  Socket s;
  connect_to(s, url, lim);
  const bool v6 = url.host.find(':') != std::string::npos;
  std::string host = v6 ? "[" + url.host + "]" : url.host;
  if (url.port != 80) host += ":" + std::to_string(url.port);
  std::string req = str_cat("POST ", url.target, " HTTP/1.1\r\nHost: ", host, "\r\n");
  for (const auto& [k, v] : headers) req += k + ": " + v + "\r\n";
  req += str_cat("Content-Length: ", body.size(), "\r\nConnection: close\r\n\r\n");
  req += body;
  send_all(s, req, url, lim);

  std::string buf;
  Head h;
  bool have_head = false;
  char chunk[16384];
  for (;;) {
    // A complete response ends the read even if the server keeps the connection open.
    if (!have_head && parse_head(buf, &h, url.text)) {
      if (h.resp.status >= 100 && h.resp.status < 200) {  // interim response: skip it
        buf.erase(0, h.body_start);
        h = Head{};
        continue;
      }
      have_head = true;
    }
    if (have_head) {
      const std::string te = lower_ascii(h.resp.header("transfer-encoding"));
      const std::string cl = h.resp.header("content-length");
      if (te.find("chunked") != std::string::npos) {
        // A complete chunked body ends with CRLF CRLF (last chunk, trailers, blank line):
        // decode then, not after every read (that would be quadratic in the body size).
        if (ends_with(buf, "\r\n\r\n") &&
            try_decode_chunked(buf.substr(h.body_start), &h.resp.body, url.text))
          return h.resp;
      } else if (!cl.empty()) {
        if (cl.find_first_not_of("0123456789") != std::string::npos || cl.size() > 15)
          throw HttpError(str_cat(url.text, ": malformed Content-Length '", cl, "'"));
        const size_t n = std::stoull(cl);
        if (n > opts.max_body_bytes)
          throw HttpError(str_cat(url.text, ": response body of ", n, " bytes is over the limit"));
        if (buf.size() - h.body_start >= n) {
          h.resp.body = buf.substr(h.body_start, n);
          return h.resp;
        }
      } else if (h.resp.status == 204 || h.resp.status == 304) {
        return h.resp;
      }
    }
    if (buf.size() > opts.max_body_bytes + (size_t{64} << 10))
      throw HttpError(str_cat(url.text, ": response larger than ", opts.max_body_bytes, " bytes"));
    // Past the deadline even a server that keeps sending is cut off.
    if (lim.past_deadline() || !wait_fd(s.fd, POLLIN, lim.wait_s()))
      throw HttpError(str_cat(url.text, ": ", lim.timed_out("waiting for the response")));
    const ssize_t n = ::recv(s.fd, chunk, sizeof chunk, 0);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      throw HttpError(str_cat(url.text, ": reading the response failed: ", std::strerror(errno)));
    }
    if (n == 0) {  // the server closed the connection
      if (!have_head)
        throw HttpError(str_cat(url.text, buf.empty()
                                              ? ": the server closed the connection without a reply"
                                              : ": the server closed the connection mid-headers"));
      const std::string te = lower_ascii(h.resp.header("transfer-encoding"));
      const bool chunked = te.find("chunked") != std::string::npos;
      if (chunked && try_decode_chunked(buf.substr(h.body_start), &h.resp.body, url.text))
        return h.resp;
      if (chunked || !h.resp.header("content-length").empty())
        throw HttpError(str_cat(url.text, ": the response body was cut short"));
      h.resp.body = buf.substr(h.body_start);  // body delimited by the end of the connection
      return h.resp;
    }
    buf.append(chunk, static_cast<size_t>(n));
  }
}

std::string describe_http_status(const HttpResponse& r) {
  std::string line;
  size_t p = 0;
  while (p < r.body.size()) {
    size_t e = r.body.find('\n', p);
    if (e == std::string::npos) e = r.body.size();
    line = trim_ows(r.body.substr(p, e - p));
    if (!line.empty()) break;
    p = e + 1;
  }
  if (line.size() > 200) line = line.substr(0, 200) + "...";
  std::string s = str_cat("HTTP ", r.status, r.reason.empty() ? "" : " ", r.reason);
  return line.empty() ? s + " (empty body)" : s + ": " + line;
}

}  // namespace mgm::eval
