"""Opens `mgm serve`'s chat page in headless Chromium (Debian's chromium + chromium-driver, driven
over the W3C WebDriver protocol with plain HTTP, no client library) and uses it as a person would.

Usage: chat_page_check.py SERVER_URL API_KEY IMAGE QUESTION SCREENSHOT_PNG

Types the API key, attaches IMAGE, sets max tokens to 6, sends QUESTION, and checks that the
answer streams in (the answer's text changes more than once) and ends equal to EXPECTED (the API's
greedy answer for the same image and question); then sends a follow-up without an image and sees
a second answer (multi-turn). Saves a screenshot. Exits 0 when all holds.
"""
import base64
import json
import subprocess
import sys
import time
import urllib.request

url, key, image, question, shot = sys.argv[1:6]
if not image.endswith((".png", ".jpg", ".jpeg")):
    # Browsers show PNG, not the fixture's PPM: the same pixels as a PNG.
    from PIL import Image
    png = shot + ".input.png"
    Image.open(image).save(png)
    image = png
# The API's greedy answer for the same image and question (what the page must show).
with open(image, "rb") as f:
    data_url = "data:image/unknown;base64," + base64.b64encode(f.read()).decode()
api = urllib.request.Request(url + "/v1/chat/completions", method="POST", headers={
    "Content-Type": "application/json", "Authorization": "Bearer " + key}, data=json.dumps({
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url}},
                                                  {"type": "text", "text": question}]}],
        "temperature": 0, "max_tokens": 6}).encode())
with urllib.request.urlopen(api, timeout=120) as r:
    expected = json.loads(r.read())["choices"][0]["message"]["content"]
driver = subprocess.Popen(["chromedriver", "--port=0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
port = None
for line in driver.stdout:
    if "started successfully on port" in line:
        port = int(line.rsplit(" ", 1)[1].strip(". \n"))
        break
if port is None:
    sys.exit("chromedriver did not start")
wd = f"http://127.0.0.1:{port}"
failures = []


def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(wd + path, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())["value"]


def check(cond, what):
    if not cond:
        failures.append(what)


def wait_for(script, limit=120.0):
    """Polls a JavaScript expression in the page until it is truthy; returns its value."""
    deadline = time.time() + limit
    while time.time() < deadline:
        v = call("POST", f"/session/{sid}/execute/sync", {"script": "return " + script, "args": []})
        if v:
            return v
        time.sleep(0.1)  # polling the page for a condition
    return None


sid = None
try:
    caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
        "binary": "/usr/bin/chromium",
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,750"]}}}}
    sid = call("POST", "/session", caps)["sessionId"]
    call("POST", f"/session/{sid}/url", {"url": url + "/"})

    def el(css):
        return call("POST", f"/session/{sid}/element", {"using": "css selector", "value": css})

    def elem_id(e):
        return list(e.values())[0]

    def type_into(css, text, clear=True):
        e = elem_id(el(css))
        if clear:
            call("POST", f"/session/{sid}/element/{e}/clear", {})
        call("POST", f"/session/{sid}/element/{e}/value", {"text": text})

    type_into("#api_key", key)
    call("POST", f"/session/{sid}/execute/sync", {"script": "document.getElementById('api_key').dispatchEvent(new Event('change'))", "args": []})
    model = wait_for("document.getElementById('model').textContent.includes('MGM-tiny') && document.getElementById('model').textContent")
    check(model, "the page lists the served model")
    type_into("#max_tokens", "6")
    type_into("#file", image, clear=False)  # a file input takes the path
    check(wait_for("document.getElementById('preview').style.display === 'flex'"), "the image preview shows")
    # Count the answer's text changes: a streamed answer changes several times.
    call("POST", f"/session/{sid}/execute/sync", {"script": """
        window.__changes = 0;
        new MutationObserver(() => { window.__changes++; }).observe(document.getElementById('log'),
            {subtree: true, childList: true, characterData: true});""", "args": []})
    type_into("#input", question)
    call("POST", f"/session/{sid}/element/{elem_id(el('#send'))}/click", {})
    check(wait_for("document.querySelector('.msg.assistant .meta')"), "the answer finishes")
    answer = call("POST", f"/session/{sid}/execute/sync", {"script": "return document.querySelector('.msg.assistant .text').textContent", "args": []})
    check(answer == expected, f"page answer {answer!r} != API answer {expected!r}")
    changes = call("POST", f"/session/{sid}/execute/sync", {"script": "return window.__changes", "args": []})
    check(changes >= 4, f"the answer streamed in ({changes} page updates)")
    check(call("POST", f"/session/{sid}/execute/sync", {"script": "return document.querySelectorAll('.msg.user img').length", "args": []}) == 1,
          "the user's message shows the image")
    type_into("#input", "And what else?")
    call("POST", f"/session/{sid}/element/{elem_id(el('#send'))}/click", {})
    check(wait_for("document.querySelectorAll('.msg.assistant .meta').length === 2"), "a second answer (multi-turn)")
    check(not call("POST", f"/session/{sid}/execute/sync", {"script": "return document.querySelector('.msg.error')", "args": []}),
          "no error bubble")
    png = call("GET", f"/session/{sid}/screenshot")
    with open(shot, "wb") as f:
        f.write(base64.b64decode(png))
finally:
    if sid:
        try:
            call("DELETE", f"/session/{sid}")
        except Exception:
            pass
    driver.terminate()
    driver.wait(30)

if failures:
    print("FAILED:", failures)
    sys.exit(1)
print("chat page checks passed")
