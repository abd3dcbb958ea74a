// Mounts GraphiQL on the page; a file of its own so the page needs no inline script.
(function () {
  var defaultQuery = [
    '# Link a contact by email and/or phone number.',
    '# Press the run button (or Ctrl-Enter) to execute.',
    'mutation {',
    '  identify(',
    '    input: {',
    '      email: "lorraine@hillvalley.edu"',
    '      phoneNumber: "123456"',
    '    }',
    '  ) {',
    '    primaryContactId',
    '    emails',
    '    phoneNumbers',
    '    secondaryContactIds',
    '  }',
    '}',
    ''
  ].join('\n');

  // Subscriptions go over a WebSocket to the same path; the headers tab's
  // Authorization reaches the server in the connection_init payload.
  var socketScheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
  function makeFetcher() {
    return GraphiQL.createFetcher({
      url: '/graphql',
      subscriptionUrl: socketScheme + '//' + window.location.host + '/graphql'
    });
  }

  // The Authorization header in the Headers tab, if the tab holds JSON.
  function authorizationOf(text) {
    try {
      var headers = JSON.parse(text || '{}');
      for (var name in headers) {
        if (name.toLowerCase() === 'authorization') return String(headers[name]);
      }
    } catch (e) {
      // Half-typed JSON: no header yet.
    }
    return null;
  }

  // GraphiQL fetches the schema when its fetcher changes, with the headers of the
  // Headers tab. Once a key is required, the first fetch is refused; a new fetcher
  // when the Authorization header changes fetches it again, so pasting a key is
  // enough (no reload, no manual re-fetch).
  function App() {
    var fetcherState = React.useState(makeFetcher);
    var lastAuthorization = React.useRef(null);
    var pending = React.useRef(null);
    function onEditHeaders(text) {
      var authorization = authorizationOf(text);
      if (authorization === lastAuthorization.current) return;
      lastAuthorization.current = authorization;
      clearTimeout(pending.current);
      pending.current = setTimeout(function () {
        fetcherState[1](makeFetcher);
      }, 300);
    }
    return React.createElement(GraphiQL, {
      fetcher: fetcherState[0],
      defaultQuery: defaultQuery,
      defaultEditorToolsVisibility: false,
      onEditHeaders: onEditHeaders
    });
  }

  var root = ReactDOM.createRoot(document.getElementById('graphiql'));
  root.render(React.createElement(App));
})();
