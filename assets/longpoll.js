// The browser client; see the README.
