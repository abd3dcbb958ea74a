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
  var fetcher = GraphiQL.createFetcher({
    url: '/graphql',
    subscriptionUrl: socketScheme + '//' + window.location.host + '/graphql'
  });
  var root = ReactDOM.createRoot(document.getElementById('graphiql'));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultQuery: defaultQuery,
      defaultEditorToolsVisibility: false
    })
  );
})();
